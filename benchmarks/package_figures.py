"""Hostile package figures (issue 11): every attack archive against the real `edge-runtime verify` and `run`.

    .venv/bin/python benchmarks/package_figures.py [--bomb-mib 1024] [--big-mib 256] [--commands verify,run]

For each hostile archive of ``tests/package/hostile.py`` (a 1 GiB gzip bomb, GNU and pax sparse members declaring
16 GiB, a member declaring 7 GiB, links, traversal, extra/duplicate/tampered/missing members, ...), plus an unsigned
and an untrusted package, one fresh process per case runs the command; reported: exit code, whether stderr is one
`edge-runtime: error:` line without a traceback, that line, and the process's peak RSS (``ru_maxrss`` from
``wait4``) against the same command on the good package. Goal: every case refused (exit 2, one line) and peak
RSS within +50 MiB of the good package ("MISS" otherwise). A good package of ``--big-mib`` is verified too, to show
that verification streams (its RSS should not grow with the file). Asserts nothing; prints the machine.

``package_cases(workdir)`` returns the same rows for a figures script that gathers every surface.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime.benchmark.machine import machine_summary  # noqa: E402
from edge_runtime.package import generate_keypair, load_private_key, pack_archive  # noqa: E402
from tests.model_factory import tensor_package  # noqa: E402
from tests.package import hostile  # noqa: E402
from tests.package.helpers import make_package  # noqa: E402

CLI = [sys.executable, "-m", "edge_runtime.cli"]
GOAL_MIB = 50.0


def _measure(argv: list[str], env: dict[str, str]) -> tuple[int, str, float, float]:
    """(exit code, stderr, peak RSS MiB, wall s) of one process: a fresh probe interpreter runs it as its only
    child and reads RUSAGE_CHILDREN, so cases never mix."""
    probe = (
        "import os, resource, subprocess, sys, time; t = time.monotonic();"
        "p = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,"
        " stderr=subprocess.PIPE, text=True);"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
        "sys.stdout.write(f'{p.returncode} {r} {time.monotonic() - t}\\n' + p.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, env=env, timeout=900)
    first, _, err = out.stdout.partition("\n")
    code, rss, wall = first.split()
    return int(code), err, int(rss) / 1024, float(wall)


def _outcome(code: int, err: str, archive: Path) -> tuple[str, str]:
    lines = err.replace(str(archive.parent) + "/", "").strip().splitlines()
    one_line = len(lines) == 1 and lines[0].startswith("edge-runtime: error:") and "Traceback" not in err
    if code == 0:
        return "ACCEPTED", ""
    return ("refused" if code == 2 and one_line else f"exit {code}, {len(lines)} stderr lines"), (lines or [""])[-1]


def build_cases(work: Path, bomb_mib: int) -> tuple[dict[str, Path], Path, Path]:
    """(case -> archive, good archive, trusted public key), all from a real sensor-model package."""
    priv, pub = generate_keypair(work / "release")
    pkg = tensor_package(work / "pkg", sign_key=load_private_key(priv))
    good = pack_archive(pkg.root, work / "good.erpkg")
    out = work / "hostile"
    out.mkdir()
    cases = {name: build() for name, build in hostile.attacks(pkg.root, out, big=bomb_mib << 20).items()}
    unsigned = tensor_package(work / "unsigned")
    (unsigned.root / "signature.json").unlink()
    cases["unsigned"] = pack_archive(unsigned.root, work / "unsigned.erpkg")
    rogue = tensor_package(work / "rogue", sign_key=load_private_key(generate_keypair(work / "rogue-key")[0]))
    cases["untrusted_key"] = pack_archive(rogue.root, work / "rogue.erpkg")
    return cases, good, pub


def _argv(command: str, archive: Path, pub: Path) -> list[str]:
    if command == "verify":
        return [*CLI, "verify", str(archive), "--trust", str(pub)]
    return [*CLI, "run", "--package", str(archive), "--trust", str(pub), "--source", "stdin", "--no-summary"]


def package_cases(work: Path, bomb_mib: int = 1024, commands: tuple[str, ...] = ("verify", "run")) -> list[dict]:
    """One row per (command, case): outcome, refusal line, peak RSS and its excess over the good package."""
    cases, good, pub = build_cases(work, bomb_mib)
    rows: list[dict[str, Any]] = []
    for command in commands:
        env = {**os.environ, "EDGE_RUNTIME_CACHE": str(work / f"cache-{command}")}
        code, err, base, wall = _measure(_argv(command, good, pub), env)
        rows.append({"surface": f"package/{command}", "case": "good package", "outcome": "ok" if code == 0 else
                     f"FAILED ({err.strip()})", "reason": "", "peak_rss_mib": base, "delta_mib": 0.0, "wall_s": wall})
        for case, archive in sorted(cases.items()):
            code, err, rss, wall = _measure(_argv(command, archive, pub), env)
            outcome, reason = _outcome(code, err, archive)
            rows.append({"surface": f"package/{command}", "case": case, "outcome": outcome, "reason": reason,
                         "peak_rss_mib": rss, "delta_mib": rss - base, "wall_s": wall})
        leftovers = sorted(p.name for p in (work / f"cache-{command}" / "packages").glob("*"))
        rows.append({"surface": f"package/{command}", "case": "cache entries left", "outcome":
                     "ok" if len(leftovers) <= 1 else f"MISS ({len(leftovers)})", "reason": "", "peak_rss_mib": 0.0,
                     "delta_mib": 0.0, "wall_s": 0.0})  # fmt: skip
    return rows


def big_package_row(work: Path, big_mib: int) -> dict[str, Any]:
    """Verify a good package with a ``big_mib`` model file: streaming keeps RSS flat."""
    priv, pub = generate_keypair(work / "big-release")
    pkg = make_package(work / "big", sign_key=load_private_key(priv))
    from edge_runtime.package.store import finalize_package, read_manifest

    with open(pkg.root / "model.onnx", "wb") as f:
        f.truncate(big_mib << 20)  # zeros: the content does not matter to verification
    fields = read_manifest(pkg.root)[0].model_dump(mode="json")
    finalize_package(pkg.root, fields, load_private_key(priv))
    archive = pack_archive(pkg.root, work / "big.erpkg")
    env = {**os.environ, "EDGE_RUNTIME_CACHE": str(work / "cache-big")}
    code, err, rss, wall = _measure(_argv("verify", archive, pub), env)
    return {"surface": "package/verify", "case": f"good package, {big_mib} MiB model", "outcome":
            "ok" if code == 0 else f"FAILED ({err.strip()})", "reason": "", "peak_rss_mib": rss, "delta_mib": 0.0,
            "wall_s": wall}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bomb-mib", type=int, default=1024, help="size the gzip bomb expands to (MiB)")
    ap.add_argument("--big-mib", type=int, default=256, help="model size of the big good package (MiB; 0: skip)")
    ap.add_argument("--commands", default="verify,run", help="comma-separated: verify, run")
    args = ap.parse_args()
    print(f"machine: {machine_summary()}")
    with tempfile.TemporaryDirectory(prefix="package-figures-") as tmp:
        work = Path(tmp)
        rows = package_cases(work, args.bomb_mib, tuple(args.commands.split(",")))
        if args.big_mib:
            rows.append(big_package_row(work, args.big_mib))
    print(f"{'surface':16} {'case':28} {'outcome':10} {'peak RSS':>9} {'+ vs good':>9}  goal  reason")
    hostile_rows = [r for r in rows if r["case"] not in ("good package", "cache entries left")
                    and not r["case"].startswith("good package,")]  # fmt: skip
    for r in rows:
        goal = ""
        if r in hostile_rows:
            goal = "ok" if r["outcome"] == "refused" and r["delta_mib"] <= GOAL_MIB else "MISS"
        rss = f"{r['peak_rss_mib']:.1f}" if r["peak_rss_mib"] else "-"
        print(f"{r['surface']:16} {r['case']:28} {r['outcome']:10} {rss:>9} {r['delta_mib']:>+9.1f}  {goal:4}  "
              f"{r['reason'][:110]}")
    refused = sum(r["outcome"] == "refused" for r in hostile_rows)
    worst = max((r["delta_mib"] for r in hostile_rows), default=0.0)
    print(f"hostile cases: {len(hostile_rows)}, refused with one line and exit 2: {refused}; "
          f"largest peak RSS over the good package: {worst:+.1f} MiB (goal: under +{GOAL_MIB:.0f} MiB) "
          f"{'ok' if refused == len(hostile_rows) and worst <= GOAL_MIB else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
