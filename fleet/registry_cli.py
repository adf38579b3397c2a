"""`edge-runtime registry ...`: the fleet server's model registry, through its API (token in EDGE_FLEET_TOKEN)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

from edge_runtime.errors import ConfigError
from fleet.api_client import ApiClient
from fleet.publish import as_archive


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get("EDGE_FLEET_SERVER"),
                   help="fleet server URL (default: $EDGE_FLEET_SERVER); API token from EDGE_FLEET_TOKEN")
    p.add_argument("--json", action="store_true", help="print the server's JSON answer")
    sub = p.add_subparsers(dest="registry_cmd", metavar="ACTION", required=True)
    sub.add_parser("list", help="every model with its version count and aliases")
    sh = sub.add_parser("show", help="a model's versions and aliases, or one version in full")
    sh.add_argument("name")
    sh.add_argument("version", nargs="?")
    li = sub.add_parser("lineage", help="a version and its ancestors, with where each came from")
    li.add_argument("name")
    li.add_argument("version")
    rg = sub.add_parser("register", help="upload a signed package (directory or .erpkg) with its lineage")
    rg.add_argument("package", type=Path)
    rg.add_argument("--parent", help="the version this one was derived from")
    rg.add_argument("--recipe", type=Path, help="JSON file with the full convert recipe (every option)")
    rg.add_argument("--git", type=Path, metavar="REPO", help="record this repository's commit and dirty flag")
    rg.add_argument("--training-command", help="the re-training command that produced the source model")
    rg.add_argument("--dataset-snapshot", help="the dataset snapshot id it was trained on")
    rp = sub.add_parser("reproduce", help="re-run a version's recorded conversion here: identical model bytes "
                        "(exit 0), or which input or tool differs (exit 1)")
    rp.add_argument("name")
    rp.add_argument("version")
    rp.add_argument("--mlflow-uri", metavar="URI", help="MLflow tracking URI, for a version converted from models:/ "
                    "(default: $MLFLOW_TRACKING_URI)")
    rp.add_argument("-q", "--quiet", action="store_true", help="no conversion progress on stderr")
    rp.add_argument("--allow-pickle", action="store_true", help="the recipe's .pkl/.joblib/.pt source is your own "
                    "file: load it (unpickling runs code in it; refused by default)")
    ex = sub.add_parser("export", help="register a version (package and lineage tags) in an MLflow registry")
    ex.add_argument("name")
    ex.add_argument("version")
    ex.add_argument("--mlflow", required=True, metavar="URI", help="MLflow tracking URI (needs the [mlflow] extra)")
    ex.add_argument("--mlflow-name", help="registered model name in MLflow (default: NAME)")
    ex.add_argument("--alias", help="also point this MLflow alias at the exported version")
    pr = sub.add_parser("promote", help="move an alias to a version and publish it to the alias's target")
    pr.add_argument("name")
    pr.add_argument("version")
    pr.add_argument("--alias", default="production", help="alias to move (default production)")
    pr.add_argument("--target", help="device id or group:NAME (default: the alias's current target)")
    rv = sub.add_parser("revert", help="move an alias back to its version before the last move, and publish it")
    rv.add_argument("name")
    rv.add_argument("--alias", default="production")
    ro = sub.add_parser("rollout", help="start a server-side rollout: canaries judged against a control group, "
                        "then waves, then production for the group")
    ro.add_argument("name")
    ro.add_argument("version")
    ro.add_argument("--target", required=True, help="group:NAME")
    ro.add_argument("--canary", action="append", default=[], metavar="DEVICE", help="a canary (repeat)")
    ro.add_argument("--canary-percent", type=float, default=10, help="share of members as canaries (default 10)")
    ro.add_argument("--waves", type=int, default=1, help="the other members in this many waves")
    ro.add_argument("--window", type=float, default=60, help="seconds the canaries are watched (default 60)")
    ro.add_argument("--timeout", type=float, default=300, help="seconds each stage's devices have to update")
    rs = sub.add_parser("rollouts", help="list rollouts, or show one with every step and verdict")
    rs.add_argument("id", nargs="?", type=int)
    for action in ("pause", "resume", "abort"):
        pa = sub.add_parser(action, help=f"{action} a rollout")
        pa.add_argument("id", type=int)


def _call(args: argparse.Namespace, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None, save_to: Path | None = None) -> Any:
    return ApiClient(args.server, "registry").call(method, path, raw=body, headers=headers, to=save_to)


def _git(repo: Path) -> dict[str, Any]:
    def git(*a: str) -> str:
        r = subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, timeout=30)  # noqa: S603,S607
        if r.returncode != 0:
            raise ConfigError(f"--git {repo}: not a git repository ({r.stderr.strip()[:200]})")
        return r.stdout.strip()

    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain"))}


def _lineage(args: argparse.Namespace) -> dict[str, Any]:
    extra: dict[str, Any] = {"parent": args.parent, "training_command": args.training_command,
                             "dataset_snapshot": args.dataset_snapshot}
    if args.recipe:
        try:
            extra["recipe"] = json.loads(args.recipe.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--recipe {args.recipe}: {exc}") from None
        if not isinstance(extra["recipe"], dict):
            raise ConfigError(f"--recipe {args.recipe}: must hold a JSON object")
    if args.git:
        extra.update(_git(args.git))
    return {k: v for k, v in extra.items() if v is not None}


def _print_model(doc: dict[str, Any]) -> None:
    by_version: dict[str, list[str]] = {}
    for alias, a in doc["aliases"].items():
        by_version.setdefault(a["version"], []).append(alias + (f"->{a['target']}" if a.get("target") else ""))
    print(f"{'VERSION':<14} {'SHA256':<14} {'SIZE':>10} {'PROFILE':<16} {'PARENT':<10} {'BY':<10} ALIASES")
    for v in doc["versions"]:
        print(f"{v['version']:<14} {v['sha256'][:12]:<14} {v['size']:>10} {v['profile']:<16} "
              f"{v['parent'] or '-':<10} {v['registered_by']:<10} {', '.join(by_version.get(v['version'], []))}")


def _print_lineage(chain: list[dict[str, Any]]) -> None:
    for v in chain:
        lin = v["lineage"]
        src = lin.get("source") or {}
        print(f"{v['name']} {v['version']}  sha256 {v['sha256']}  signer {v['signer']}  parent {v['parent'] or '-'}")
        print(f"  source {src.get('format', '-')} {src.get('filename', '-')} sha256 {src.get('sha256', '-')}")
        cal = lin.get("calibration") or {}
        print(f"  calibration {cal.get('method') or '-'} samples {cal.get('samples')} "
              f"fingerprint {cal.get('fingerprint') or '-'}; validation {lin.get('validation_sha256') or '-'}")
        print(f"  git {lin.get('git_commit') or '-'}{' (dirty)' if lin.get('git_dirty') else ''}  "
              f"recipe {len((lin.get('recipe') or {}).get('options', lin.get('recipe') or {}))} options  tools "
              + ", ".join(f"{k} {val}" for k, val in sorted((lin.get("tools") or {}).items())))
        if lin.get("mlflow"):
            m = lin["mlflow"]
            print(f"  mlflow {m['model_uri']} -> models:/{m['name']}/{m['version']} run {m.get('run_id') or '-'}")


def _reproduce(args: argparse.Namespace) -> int:
    import sys

    from fleet.reproduce import reproduce

    doc = _call(args, "GET", f"/registry/models/{urllib.parse.quote(args.name)}/versions/"
                             f"{urllib.parse.quote(args.version)}")  # fmt: skip
    say = (lambda s: None) if args.quiet else (lambda s: print(f"reproduce: {s}", file=sys.stderr, flush=True))
    report = reproduce(doc, say, args.mlflow_uri, allow_pickle=args.allow_pickle)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print("\n".join(report.lines()))
    return 0 if report.identical else 1


def _export(args: argparse.Namespace) -> Any:
    import tempfile

    from converters.mlflow_source import import_mlflow
    from fleet.mlflow_export import export

    import_mlflow()  # the extra is checked before anything is downloaded
    path = f"/registry/models/{urllib.parse.quote(args.name)}/versions/{urllib.parse.quote(args.version)}"
    doc = _call(args, "GET", path)
    with tempfile.TemporaryDirectory(prefix="edge-export-") as tmp:
        archive = Path(tmp) / f"{args.name}-{args.version}.erpkg"
        _call(args, "GET", path + "/package", save_to=archive)
        from edge_runtime.fsutil import sha256_file

        if sha256_file(archive) != doc["sha256"]:
            raise ConfigError(f"the package the server sent is not {args.name} {args.version}'s (sha256 differs)")
        out = export(doc, archive, args.mlflow, args.mlflow_name, args.alias)
    if not args.json:
        print(f"exported {args.name} {args.version} to MLflow as {out['name']} version {out['version']}"
              + (f" (alias {out['alias']})" if out["alias"] else "") + ("" if out["created"] else ", already there"))
    return out


def _rollouts(args: argparse.Namespace) -> Any:
    """The /rollouts endpoints (they live beside /registry on the server)."""
    cmd, json_h = args.registry_cmd, {"Content-Type": "application/json"}
    if cmd == "rollout":
        plan = {"name": args.name, "version": args.version, "target": args.target, "canaries": args.canary,
                "canary_percent": args.canary_percent, "waves": args.waves, "window_s": args.window,
                "timeout_s": args.timeout}
        out = _call(args, "POST", "/rollouts", json.dumps(plan).encode(), json_h)
        if not args.json:
            print(f"rollout {out['id']}: {out['from_version']} -> {args.version}; canaries {', '.join(out['canaries'])}"
                  f"; {len(out['waves'])} waves")
    elif cmd == "rollouts":
        out = _call(args, "GET", "/rollouts" + (f"/{args.id}" if args.id is not None else ""))
        if not args.json:
            for r in [out] if args.id is not None else out["items"]:
                print(f"{r['id']:>4} {r['name']} {r['from_version']} -> {r['version']} {r['target']} {r['state']}"
                      f" {r['reason'] or ''}")
                for st in r.get("steps", []):
                    why = (st.get("figures") or {}).get("reason", "")
                    print(f"      {st['from_state']} --{st['event']}--> {st['to_state']} by {st['user']} {why}")
    else:
        out = _call(args, "POST", f"/rollouts/{args.id}/{cmd}", b"{}", json_h)
        if not args.json:
            print(f"rollout {out['id']}: {out['state']}")
    return out


def run(args: argparse.Namespace) -> int:
    cmd, out = args.registry_cmd, None
    if cmd == "list":
        out = _call(args, "GET", "/registry/models")
        if not args.json:
            for m in out["items"]:
                aliases = ", ".join(f"{k}={a['version']}" for k, a in sorted(m["aliases"].items()))
                print(f"{m['name']:<24} {m['versions']:>3} versions  {aliases}")
    elif cmd == "show":
        name = urllib.parse.quote(args.name)
        path = f"/registry/models/{name}" + (f"/versions/{urllib.parse.quote(args.version)}" if args.version else "")
        out = _call(args, "GET", path)
        if not args.json:
            _print_model(out) if args.version is None else _print_lineage([out])
    elif cmd == "lineage":
        out = _call(args, "GET", f"/registry/models/{urllib.parse.quote(args.name)}/versions/"
                                 f"{urllib.parse.quote(args.version)}/lineage")
        if not args.json:
            _print_lineage(out["chain"])
    elif cmd == "register":
        extra = json.dumps(_lineage(args))
        out = _call(args, "POST", "/registry/packages", as_archive(args.package).read_bytes(),
                    {"Content-Type": "application/octet-stream", "X-Lineage": extra})
        if not args.json:
            print(f"registered {out['name']} {out['version']} (sha256 {out['sha256'][:12]}, {out['size']} bytes)")
    elif cmd == "reproduce":
        return _reproduce(args)
    elif cmd == "export":
        out = _export(args)
    elif cmd in ("rollout", "rollouts", "pause", "resume", "abort"):
        out = _rollouts(args)
    else:
        body: dict[str, Any] = {"alias": args.alias}
        if cmd == "promote":
            body.update(version=args.version, target=args.target)
        out = _call(args, "POST", f"/registry/models/{urllib.parse.quote(args.name)}/{cmd}", json.dumps(body).encode(),
                    {"Content-Type": "application/json"})
        if not args.json:
            where = f" for {out['target']}" if out["target"] else " (no target: nothing published)"
            print(f"{out['name']}@{out['alias']}: {out['previous'] or '-'} -> {out['version']}{where}"
                  + (f"; cleared {len(out['cleared_device_documents'])} per-device documents"
                     if out["cleared_device_documents"] else ""))
    if args.json:
        print(json.dumps(out, indent=1))
    return 0
