"""`edge-runtime fleet serve | user add | token create`: the fleet server's subcommands."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from edge_runtime.errors import ConfigError, validation_message

COMMANDS = ("serve", "user", "token", "device-token")
log = logging.getLogger(__name__)


def configure(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the server subcommands on `fleet`'s subparsers (and `status --server`)."""
    st = sub.choices.get("status")
    if st is not None:
        st.add_argument("--server", default=os.environ.get("EDGE_FLEET_SERVER"),
                        help="read from this fleet server (http://host:8700) instead of the broker; token from "
                        "EDGE_FLEET_TOKEN (default: $EDGE_FLEET_SERVER)")
    sv = sub.add_parser("serve", help="run the fleet server: MQTT ingest, database, REST API and dashboard")
    # --broker/--prefix also exist on `fleet` itself; SUPPRESS keeps a value given there.
    sv.add_argument("--broker", default=argparse.SUPPRESS, help="mqtt://host:port or mqtts://host:port (TLS and "
                    "credentials: the options before `serve`, e.g. fleet --ca ca.crt --username fleet serve ...)")
    sv.add_argument("--prefix", default=argparse.SUPPRESS, help="topic prefix")
    _db_arg(sv)
    sv.add_argument("--data-dir", help="sample store (and default SQLite database) folder")
    sv.add_argument("--host", default="127.0.0.1", help="HTTP listen address")
    sv.add_argument("--port", type=int, default=8700, help="HTTP port")
    sv.add_argument("--operator-key", help="Ed25519 private key that signs commands; without it actions are refused "
                    "(an encrypted key: fleet --passphrase-file or $EDGE_RUNTIME_KEY_PASSPHRASE)")
    sv.add_argument("--group", default="fleet", help="shared-subscription group (instances split the streams)")
    sv.add_argument("--client-id", default="fleet-server", help="MQTT client id, unique per instance")
    sv.add_argument("--public-url", help="this server's URL as devices reach it (https://fleet.example:8700): "
                    "desired documents carry package URLs under it and devices download over HTTP(S) with their "
                    "device token (default: none, devices download over MQTT)")
    sv.add_argument("--secure-cookies", action="store_true", help="session cookies only over HTTPS")
    sv.add_argument("--retrain", action="append", default=[], metavar="FILE", help="retrain.yaml of a model: "
                    "triggers, training command, gates, canary (repeat for more models)")
    us = sub.add_parser("user", help="manage dashboard and API users")
    us_sub = us.add_subparsers(dest="user_cmd", required=True)
    ua = us_sub.add_parser("add", help="add a user (password from --password-env or a prompt)")
    ua.add_argument("name")
    ua.add_argument("--role", choices=["viewer", "operator"], required=True)
    ua.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable")
    _db_arg(ua)
    tk = sub.add_parser("token", help="API tokens")
    tk_sub = tk.add_subparsers(dest="token_cmd", required=True)
    tc = tk_sub.add_parser("create", help="create an API token for a user (printed once)")
    tc.add_argument("user")
    tc.add_argument("--name", default="api", help="what the token is for")
    tc.add_argument("--days", type=float, help="expires after this many days (default: never)")
    _db_arg(tc)
    dt = sub.add_parser("device-token", help="a device's credential for package downloads over HTTP(S) (replaces "
                        "its earlier one; only a hash is kept)")
    dt.add_argument("device")
    dt.add_argument("--out", metavar="FILE", help="write the token to FILE (mode 0600) for the device's "
                    "update.http_token_file, instead of printing it")
    dt.add_argument("--revoke", action="store_true", help="remove the device's credential")
    _db_arg(dt)


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="database URL: sqlite:///path or postgresql://user@host/db "
                   "(default: SQLite under the data folder)")


def _engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fleet.server.db.engine import make_engine, migrate

    engine = make_engine(args.db)
    migrate(engine)
    return engine


def uses_server(args: argparse.Namespace) -> bool:
    return args.fleet_cmd in COMMANDS or (args.fleet_cmd == "status" and bool(getattr(args, "server", None)))


def status(args: argparse.Namespace) -> int:
    """`fleet status` through the server's API: every device, in the broker view's shape and table."""
    import json
    import urllib.error
    import urllib.request

    from fleet.status import table

    token = os.environ.get("EDGE_FLEET_TOKEN")
    if not token:
        raise ConfigError("fleet status --server needs an API token in EDGE_FLEET_TOKEN (fleet token create USER)")
    base, devices, offset = args.server.rstrip("/"), {}, 0
    if not base.startswith(("http://", "https://")):
        raise ConfigError(f"--server {base!r} must be an http:// or https:// URL")
    while True:
        req = urllib.request.Request(f"{base}/api/v1/devices?limit=1000&offset={offset}",  # noqa: S310 - checked
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - the URL the user configured
                page = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise ConfigError(f"fleet server {base} answered {exc.code}: {exc.read().decode()[:200]}") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read from fleet server {base}: {exc}") from None
        for d in page["items"]:
            devices[d["id"]] = {
                "state": {**(d.get("state") or {}), "online": d["online"], "model": d.get("serving")},
                "update": {"serving": d.get("serving"), "state": d.get("update_state") or "-",
                           "reason": d.get("update_reason") or ""},
                "model": d.get("model"), "version": d.get("version"), "last_seen": d.get("last_seen"),
                "drifting": d.get("drifting"), "desired_version": d.get("desired_version"),
                "follows": "device" if d.get("desired_scope") == "device" else
                ("group:" + ",".join(d["groups"]) if d.get("groups") else "-")}
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            break
    print(json.dumps(devices, indent=1) if args.json else table(devices))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.fleet_cmd == "status":
        return status(args)
    if args.fleet_cmd == "user":
        from fleet.server.auth import add_user

        password = os.environ.get(args.password_env, "") if args.password_env else getpass.getpass("password: ")
        add_user(_engine(args), args.name, password, args.role)
        print(f"user {args.name} ({args.role}) added")
        return 0
    if args.fleet_cmd == "token":
        from fleet.server.auth import create_token

        token, _ = create_token(_engine(args), args.user, args.name, "api",
                                None if args.days is None else args.days * 86400)
        print(token)
        return 0
    if args.fleet_cmd == "device-token":
        return device_token(args)
    return serve(args)


def device_token(args: argparse.Namespace) -> int:
    from edge_runtime.fsutil import atomic_write_text
    from fleet.server.device_auth import create_device_token, revoke_device_token

    engine = _engine(args)
    if args.revoke:
        if not revoke_device_token(engine, args.device):
            raise ConfigError(f"device {args.device!r} has no download credential")
        print(f"download credential of {args.device} revoked")
        return 0
    token = create_device_token(engine, args.device, getpass.getuser())
    if args.out:
        atomic_write_text(Path(args.out), token + "\n", mode=0o600)
        print(f"download credential of {args.device} written to {args.out} (mode 0600)")
    else:
        print(token)
    return 0


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fleet.server.db.engine import data_dir
    from fleet.server.settings import ServerSettings

    try:
        return ServerSettings(db_url=args.db, data_dir=Path(args.data_dir) if args.data_dir else data_dir(),
                              host=args.host, port=args.port, operator_key=args.operator_key,
                              public_url=args.public_url,
                              secure_cookies=args.secure_cookies,
                              ingest={"group": args.group, "client_id": args.client_id})
    except ValidationError as exc:
        raise ConfigError(f"invalid fleet serve options: {validation_message(exc, root='serve')}") from None


def _policies(files: list[str]):  # type: ignore[no-untyped-def]
    """Each --retrain file, validated before the server starts (a bad one: one line, exit 2)."""
    if not files:
        return None
    from fleet.retrain.policy import load_policy

    out = {}
    for f in files:
        pol = load_policy(Path(f))
        if pol.model in out:
            raise ConfigError(f"--retrain {f}: a second policy for model {pol.model}")
        out[pol.model] = pol
    return out


def _mqtt(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The broker settings from `fleet`'s own broker options (shared with publish, status, rollout)."""
    from fleet.command import broker_settings

    return broker_settings(args)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edge_runtime.package import load_private_key, read_passphrase
    from fleet.server.app import create_app
    from fleet.server.db.engine import make_engine, migrate
    from fleet.server.ingest import Ingest
    from fleet.server.rollup import Maintenance
    from fleet.server.store import Store

    settings = _settings(args)
    mqtt = _mqtt(args)
    key = load_private_key(settings.operator_key, read_passphrase(args.passphrase_file)) \
        if settings.operator_key else None
    if settings.db_url is None:
        settings.db_url = f"sqlite:///{settings.data_dir / 'fleet.db'}"
    engine = make_engine(settings.db_url)
    migrate(engine)
    store = Store(engine, settings.sample_dir, settings.sample_max_bytes)
    ingest = Ingest(store, mqtt, settings.ingest)
    policies = _policies(args.retrain)
    app = create_app(settings, engine, ingest, key, mqtt.topics, [Maintenance(engine, settings.retention)],
                     retrain=policies)
    print(f"fleet server on http://{settings.host}:{settings.port} (database {engine.url.render_as_string()}, "
          f"broker {mqtt.host}:{mqtt.port}, operator key: {'yes' if key else 'none: actions refused'})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0
