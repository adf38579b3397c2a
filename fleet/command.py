"""`edge-runtime fleet publish|status|rollback|rollout`: the broker-facing side of OTA updates."""

from __future__ import annotations

import argparse
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edge_runtime.errors import ConfigError, validation_message
from fleet.server import cli as server_cli

if TYPE_CHECKING:
    from fleet.rollout import RolloutPlan


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--prefix", default="edge", help="topic prefix")
    add_broker_options(p)
    p.add_argument("--registry", default=str(Path.home() / ".config/edge-runtime/fleet.json"),
                   help="local record of published packages (for rollback)")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE",
                   help="passphrase of an encrypted --key (first line; or $EDGE_RUNTIME_KEY_PASSPHRASE)")
    sub = p.add_subparsers(dest="fleet_cmd", required=True)
    pub = sub.add_parser("publish", help="upload a package and set it as desired for a device or group:NAME")
    pub.add_argument("package")
    pub.add_argument("--target", help="device id, or group:NAME (without it: upload and register only)")
    pub.add_argument("--key", help="Ed25519 private key that signs the desired document (with --target)")
    pub.add_argument("--url", help="optional HTTP(S) URL of the same archive")
    cm = sub.add_parser("command", help="send a signed command to one device (e.g. upload_samples)")
    cm.add_argument("device", help="device id")
    cm.add_argument("command", choices=["upload_samples"])
    cm.add_argument("--key", "--sign-key", dest="key", required=True,
                    help="Ed25519 private key of an operator (the device checks it holds the operator role)")
    cm.add_argument("--max", type=int, default=10, help="upload_samples: the newest N stored samples (1..100)")
    cm.add_argument("--ids", help="upload_samples: comma-separated sample ids instead of --max")
    cm.add_argument("--ttl", type=float, default=300.0, help="seconds until the device refuses the command")
    po = sub.add_parser("policy", help="signed sample-collection policy for the fleet or a group")
    po_sub = po.add_subparsers(dest="policy_cmd", required=True)
    ps = po_sub.add_parser("set", help="sign a policy file (YAML) and publish it retained to the devices")
    ps.add_argument("file", type=Path, help="the policy (see README: Collecting samples)")
    ps.add_argument("--group", help="only this group's devices (default: the whole fleet)")
    ps.add_argument("--key", required=True, help="Ed25519 private key of an operator")
    st = sub.add_parser("status", help="show every device's model, update state and health")
    st.add_argument("--wait", type=float, default=1.0, help="seconds to collect retained messages")
    st.add_argument("--json", action="store_true")
    rb = sub.add_parser("rollback", help="signed rollback of a device or group to a published version")
    rb.add_argument("--target", required=True)
    rb.add_argument("--to", required=True, help="version to go back to (published from this registry)")
    rb.add_argument("--name", help="model name (default: the model the target serves now, from its status)")
    rb.add_argument("--key", required=True)
    ro = sub.add_parser("rollout", help="canary rollout: canaries first, watch, then promote or roll back")
    ro.add_argument("package")
    ro.add_argument("--key", required=True, help="Ed25519 private key that signs the desired documents")
    pick = ro.add_mutually_exclusive_group(required=True)
    pick.add_argument("--canary", type=float, metavar="PERCENT", help="percent of devices used as canaries")
    pick.add_argument("--canary-devices", metavar="A,B", help="comma-separated canary device ids")
    ro.add_argument("--group", help="only devices of this group; promote through the group's desired document")
    ro.add_argument("--window", type=float, default=30.0, help="seconds to watch the canaries after they commit")
    ro.add_argument("--max-error-rate", type=float, default=0.05, help="canary error rate that stops the rollout")
    ro.add_argument("--max-latency-ms", type=float, help="canary latency p95 that stops the rollout")
    ro.add_argument("--ignore-drift", action="store_true", help="do not stop when a canary reports drift")
    ro.add_argument("--timeout", type=float, default=180.0, help="seconds allowed for each phase")
    ro.add_argument("--waves", type=int, default=1, help="promote the other devices in this many waves, each "
                    "committing before the next starts")
    ro.add_argument("--json", action="store_true", help="print the result as JSON")
    server_cli.configure(sub)  # serve, user, token (fleet/server/cli.py)


def rollout_plan(args: argparse.Namespace) -> RolloutPlan:
    """The rollout plan from the command line, checked before anything is uploaded."""
    from fleet.rollout import RolloutPlan

    listed = tuple(d.strip() for d in args.canary_devices.split(",") if d.strip()) if args.canary_devices else ()
    try:
        return RolloutPlan(canary_percent=args.canary, canary_devices=listed, window_s=args.window,
                           max_error_rate=args.max_error_rate, max_latency_ms=args.max_latency_ms,
                           stop_on_drift=not args.ignore_drift, group=args.group, timeout_s=args.timeout,
                           waves=args.waves)
    except ValidationError as exc:
        raise ConfigError(f"invalid rollout options: {validation_message(exc, root='rollout')}") from None


def add_broker_options(p: argparse.ArgumentParser) -> None:
    """TLS and credentials for the broker (before the subcommand: the subcommands' --key is the signing key)."""
    g = p.add_argument_group("broker TLS and credentials")
    g.add_argument("--ca", type=Path, help="CA certificate (PEM) that signed the broker's certificate (implies TLS)")
    g.add_argument("--cert", type=Path, help="client certificate (PEM) for mutual TLS (with --key)")
    g.add_argument("--key", dest="tls_key", type=Path, help="private key (PEM) of --cert")
    g.add_argument("--username", help="broker user name")
    g.add_argument("--password-file", type=Path, help="file whose first line is the broker password (default: "
                   "$EDGE_RUNTIME_MQTT_PASSWORD; never put it in the URL, where ps shows it)")


def client_id() -> str:
    """A client id of its own per CLI process: two CLIs (a rollout and a `fleet status`) never kick each other off
    the broker, which allows one connection per client id."""
    return f"fleet-cli-{os.getpid()}-{secrets.token_hex(3)}"


def broker_settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """MqttSettings from --broker and the TLS/credential options (a password in the URL still works)."""
    from edge_runtime.sync.mqtt_settings import TlsSettings, resolve_password, settings_from_url

    extra: dict[str, Any] = {"prefix": args.prefix, "max_payload": 1 << 20}
    if args.ca or args.cert or args.tls_key:
        try:
            extra["tls"] = TlsSettings(ca_cert=args.ca, client_cert=args.cert, client_key=args.tls_key)
        except ValidationError as exc:
            raise ConfigError(f"broker TLS options: {validation_message(exc)}") from None
    settings = settings_from_url(args.broker, "fleet-cli", **extra)
    updates: dict[str, Any] = {}
    if args.username:
        updates["username"] = args.username
    if settings.password is None and (args.password_file or args.username or settings.username):
        updates["password"] = resolve_password(args.password_file)
    return settings.model_copy(update=updates) if updates else settings


def _link(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from edge_runtime.sync.mqtt import MqttLink

    # no will and no retained state: a CLI is not a device and must not show up in `fleet status`
    link = MqttLink(broker_settings(args), client_id=client_id(), will=False, announce=False)
    link.start()
    if not link.wait_connected(10):
        raise ConfigError(f"cannot reach broker {args.broker}: {link.last_error or 'timeout'}")
    return link


def run(args: argparse.Namespace) -> int:
    from edge_runtime.package import load_private_key, read_passphrase

    if server_cli.uses_server(args):
        return server_cli.run(args)
    plan = rollout_plan(args) if args.fleet_cmd == "rollout" else None
    command = command_doc(args) if args.fleet_cmd == "command" else None
    policy = None
    if args.fleet_cmd == "policy":
        from fleet.policy import load_policy, scope_of

        policy = (scope_of(args.group), load_policy(args.file))
    if args.fleet_cmd == "publish" and args.target and not args.key:
        raise ConfigError("fleet publish --target needs --key to sign the desired document")
    key = load_private_key(args.key, read_passphrase(args.passphrase_file)) if getattr(args, "key", None) else None
    link = _link(args)
    try:
        if policy is not None:
            from fleet.policy import publish_policy

            doc = publish_policy(link, link.topics, policy[0], policy[1], key)
            print(f"collection policy for {doc.scope} published (sequence {doc.sequence}, upload "
                  f"{'on' if doc.policy.upload else 'off'})")
            return 0
        if command is not None:
            from fleet.publish import send_command

            send_command(link, link.topics, command, key)
            print(f"sent {command.command} to {command.device} (request {command.request_id}, sequence "
                  f"{command.sequence}, expires in {args.ttl:g} s)")
            return 0
        return _dispatch(args, link, key, plan)
    finally:
        link.stop()


def command_doc(args: argparse.Namespace) -> Any:
    """The (unsigned) command from the command line, checked before connecting."""
    from edge_runtime.sync.commands import new_command

    ids = tuple(i.strip() for i in args.ids.split(",") if i.strip()) if args.ids else ()
    try:
        return new_command(args.device, args.command, ttl_s=args.ttl, max=args.max, ids=ids)
    except ValidationError as exc:
        raise ConfigError(f"invalid command: {validation_message(exc, root='command')}") from None


def _dispatch(args: argparse.Namespace, link: Any, key: Any, plan: RolloutPlan | None) -> int:
    from fleet import publish
    from fleet.rollout import Rollout
    from fleet.status import FleetWatch, collect, table

    topics = link.topics
    registry = publish.Registry(Path(args.registry))
    if args.fleet_cmd == "status":
        devices = collect(link, topics, args.wait)
        print(json.dumps(devices, indent=1) if args.json else table(devices))
        return 0
    if args.fleet_cmd == "rollback":
        pub = registry.find(args.to, args.name or _serving_name(link, topics, registry, args.target))
        publish.set_desired(link, topics, pub, args.target, key, rollback=True)
        print(f"rollback of {args.target} to {pub.name} {pub.version} requested")
        return 0
    watch = FleetWatch(link, topics) if plan is not None else None
    pub = publish.upload(link, topics, Path(args.package))
    registry.add(pub)
    if args.fleet_cmd == "publish":
        if not args.target:
            print(f"uploaded {pub.name} {pub.version} ({pub.meta.size} bytes); registered in {registry.path}")
            return 0
        doc = publish.set_desired(link, topics, pub, args.target, key, url=args.url)
        print(f"published {pub.name} {pub.version} ({pub.meta.size} bytes, {len(pub.meta.chunk_sha256)} chunks) "
              f"as desired for {args.target} (sequence {doc.sequence})")
        return 0
    assert watch is not None and plan is not None
    watch.settle()
    res = Rollout(link, watch, pub, key, plan, registry).run()
    if args.json:
        print(json.dumps(res.to_dict(), indent=1))
    else:
        print(f"{res.code}: {res.reason}")
        print(f"canaries: {', '.join(res.canaries)}; rolled back: {', '.join(res.rolled_back) or '-'}")
        print(table(watch.snapshot()))
    return 0 if res.promoted else 1


def _serving_name(link: Any, topics: Any, registry: Any, target: str) -> str | None:
    """The model name the target (a device, or every device of group:NAME) serves now, from the retained status;
    None when nothing is known. Devices of one group serving different models are ambiguous: name one."""
    from fleet.publish import parse_target
    from fleet.status import collect

    scope, name = parse_target(target)
    names = set()
    for dev, doc in collect(link, topics).items():
        up = doc.get("update") or {}
        if (scope == "device" and dev == name) or (scope == "group" and name in (up.get("groups") or [])):
            pub = registry.find_key(str(up.get("serving")))
            if pub is not None:
                names.add(pub.name)
    if len(names) > 1:
        raise ConfigError(f"{target} serves several models ({', '.join(sorted(names))}): give --name")
    return names.pop() if names else None
