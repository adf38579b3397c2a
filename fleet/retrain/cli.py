"""`edge-runtime retrain run | list | show | approve | cancel | import | teacher | worker`, through the fleet server's
API (token in EDGE_FLEET_TOKEN). `worker` claims training jobs, runs the command here, uploads model and log."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from fleet.api_client import ApiClient


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get("EDGE_FLEET_SERVER"),
                   help="fleet server URL (default: $EDGE_FLEET_SERVER); API token from EDGE_FLEET_TOKEN")
    p.add_argument("--json", action="store_true", help="print the server's JSON answer")
    sub = p.add_subparsers(dest="retrain_cmd", metavar="ACTION", required=True)
    rn = sub.add_parser("run", help="start a re-training run by hand (the server's retrain.yaml for the model)")
    rn.add_argument("model")
    rn.add_argument("--note", help="why, recorded with the run")
    ls = sub.add_parser("list", help="runs, newest first")
    ls.add_argument("--model")
    sh = sub.add_parser("show", help="a run with every step, its gates and its log")
    sh.add_argument("id", type=int)
    sh.add_argument("--log", action="store_true", help="print the training log only")
    for action in ("approve", "cancel"):
        a = sub.add_parser(action, help="approve a candidate for its canary rollout" if action == "approve"
                           else "cancel a run (its training stops, its rollout is aborted)")
        a.add_argument("id", type=int)
    im = sub.add_parser("import", help="import labels from a path on the server: class folders, CSV, COCO, YOLO")
    im.add_argument("format", choices=["folders", "csv", "coco", "yolo"])
    im.add_argument("path")
    te = sub.add_parser("teacher", help="label unlabelled samples with a teacher model (a float ONNX on the server)")
    te.add_argument("model", help="the student model (its preprocessing and class labels)")
    te.add_argument("teacher", help="path of the teacher .onnx on the server")
    te.add_argument("--min-confidence", type=float, default=0.9, help="below this probability: no label")
    wk = sub.add_parser("worker", help="train on this machine: claim jobs, run the command, upload model and log")
    wk.add_argument("--server", default=argparse.SUPPRESS, help="fleet server URL (as before the action)")
    wk.add_argument("--name", default=os.uname().nodename, help="worker name (default: the host name)")
    wk.add_argument("--work-dir", type=Path, help="where jobs run (default: a temporary folder)")
    wk.add_argument("--poll", type=float, default=2.0, help="seconds between claims when idle")
    wk.add_argument("--once", action="store_true", help="do at most one job, then exit")


def _print_runs(items: list[dict[str, Any]]) -> None:
    print(f"{'RUN':>4} {'MODEL':<14} {'PARENT':<10} {'CANDIDATE':<10} {'STATE':<18} WHY")
    for r in items:
        why = ", ".join(x.get("trigger", "?") for x in r["reasons"])
        print(f"{r['id']:>4} {r['model']:<14} {r['parent']:<10} {r['candidate'] or '-':<10} {r['state']:<18} {why}"
              + (f"  ({r['reason']})" if r.get("reason") else ""))


def _print_run(r: dict[str, Any]) -> None:
    print(f"run {r['id']}: {r['model']} {r['parent']} -> {r['candidate'] or '-'}, {r['state']}"
          + (f" ({r['reason']})" if r.get("reason") else ""))
    print(f"snapshot {r['snapshot'] or '-'}; rollout {r['rollout_id'] or '-'}; attempts {r['attempt']}")
    for s in r["steps"]:
        print(f"  {time.strftime('%H:%M:%S', time.gmtime(s['ts']))} {s['event']:<16} {s['from_state']} -> "
              f"{s['to_state']} by {s['user']}")
    for name, g in (r.get("gates") or {}).items():
        if isinstance(g, dict):
            print(f"  gate {name}: {'passed' if g['passed'] else 'FAILED'} "
                  f"{json.dumps({k: v for k, v in g.items() if k != 'passed'})}")


def run(args: argparse.Namespace) -> int:
    c = ApiClient(args.server, "retrain")
    cmd = args.retrain_cmd
    if cmd == "worker":
        return worker(c, args)
    if cmd == "run":
        out = c.call("POST", "/retrain/runs", {"model": args.model, "note": args.note})
    elif cmd == "list":
        q = f"?model={urllib.parse.quote(args.model)}" if args.model else ""
        out = c.call("GET", f"/retrain/runs{q}")
    elif cmd == "show":
        if args.log:
            sys.stdout.write(c.call("GET", f"/retrain/runs/{args.id}/log").decode(errors="replace"))
            return 0
        out = c.call("GET", f"/retrain/runs/{args.id}")
    elif cmd == "import":
        out = c.call("POST", "/labels/import", {"format": args.format, "path": args.path})
    elif cmd == "teacher":
        out = c.call("POST", "/labels/teacher", {"model": args.model, "teacher": args.teacher,
                                                 "min_confidence": args.min_confidence})
    else:
        out = c.call("POST", f"/retrain/runs/{args.id}/{cmd}")
    if args.json:
        print(json.dumps(out, indent=1))
    elif cmd == "list":
        _print_runs(out["items"])
    elif cmd == "show":
        _print_run(out)
    elif cmd == "import":
        print(f"{out['labelled']} labels imported")
    elif cmd == "teacher":
        print(f"{out['labelled']} samples labelled by teacher {out['teacher']} "
              f"({out['below_confidence']} below the confidence floor)")
    else:
        print(f"run {out['id']}: {out['state']}")
    return 0


def worker(c: ApiClient, args: argparse.Namespace) -> int:
    """Claim, train, upload; idle polls every ``--poll`` seconds. Ends on Ctrl-C (a claimed job then times out)."""
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="edge-retrain-"))
    print(f"retrain worker {args.name} on {c.base}, jobs under {work}", file=sys.stderr, flush=True)
    try:
        while True:
            job = c.call("POST", f"/retrain/claim?worker={urllib.parse.quote(args.name)}")["run"]
            if job is None:
                if args.once:
                    return 0
                time.sleep(args.poll)
                continue
            _do(c, job, work / f"run-{job['id']}-{job['attempt']}", args.name)
            if args.once:
                return 0
    except KeyboardInterrupt:
        return 130


def _do(c: ApiClient, job: dict[str, Any], folder: Path, name: str) -> None:
    from fleet.retrain import training

    rd = training.RunDir(folder)
    rd.data.mkdir(parents=True, exist_ok=True)
    suffix = job["model_suffix"]
    for file in ("train.npz", "snapshot.json"):
        c.call("GET", f"/retrain/runs/{job['id']}/data/{file}", to=rd.data / file)
    c.call("GET", f"/retrain/runs/{job['id']}/parent-model", to=rd.parent_model(suffix))
    print(f"run {job['id']}: training (attempt {job['attempt']})", file=sys.stderr, flush=True)
    t = training.start(job["command"], rd, suffix, job["timeout_s"], None, job["attempt"])
    t.done.wait()
    c.call("POST", f"/retrain/runs/{job['id']}/log", raw=rd.log.read_bytes()[-(8 << 20):])
    out = rd.output(suffix)
    rc = -9 if t.timed_out else int(t.rc if t.rc is not None else -1)
    body = out.read_bytes() if rc == 0 and out.is_file() else b""
    res = c.call("POST", f"/retrain/runs/{job['id']}/result?worker={urllib.parse.quote(name)}&rc={rc}", raw=body)
    print(f"run {job['id']}: exit {rc}, server says {res['state']}", file=sys.stderr, flush=True)
