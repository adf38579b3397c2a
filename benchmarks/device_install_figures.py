"""Figures of the product as a device installs it, all measured in this run.

Builds the wheel of this checkout, installs it with the device extras into a fresh venv (pip's cache makes a second
run faster: the first line says which), then measures with the installed console script:

- the venv's size on disk and the install's wall time;
- `import edge_runtime.api` in that venv (median of 5 fresh interpreters);
- cold start of `edge-runtime run`: process start until the first result line is written, and until exit, for a
  signed int8 TFLite package on a one-frame clip (median of 5).

    .venv/bin/python benchmarks/device_install_figures.py [--extras device] [--work DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edge_runtime.benchmark.machine import machine_summary  # noqa: E402
from tests.installed.device_env import LAPTOP_ONLY, build_device_env  # noqa: E402
from tests.sources.media import write_video  # noqa: E402

ROUNDS = 5


def _signed_package(work: Path) -> tuple[Path, Path]:
    from edge_runtime.package import generate_keypair, load_private_key, pack_archive
    from tests.model_factory import classifier_package

    priv, pub = generate_keypair(work / "release")
    pkg = classifier_package(work / "tiny", fmt="tflite", profile="raspberry-pi-4", sign_key=load_private_key(priv))
    return pack_archive(pkg.root, work / "tiny.erpkg"), pub


def _cold_start(cli: list[str], env: dict[str, str], args: list[str], out: Path) -> tuple[float, float]:
    """(seconds to the first result line, seconds to exit) of one fresh `run` process."""
    out.unlink(missing_ok=True)
    start = time.monotonic()
    proc = subprocess.Popen([*cli, *args, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    first = None
    while proc.poll() is None:
        if first is None and out.is_file() and out.stat().st_size:
            first = time.monotonic() - start
        time.sleep(0.002)
    total = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
    return (first if first is not None else total), total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="device")
    parser.add_argument("--work", type=Path, help="folder to build in (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="device-install-"))
    cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {machine_summary()}")
    print(f"pip cache: {cache or 'disabled'} (a warm cache makes the install time a lower bound of a cold one)")
    env = build_device_env(work / "env", extras=args.extras)
    present = env.importable(LAPTOP_ONLY)
    print(f"wheel: {env.wheel.name} built in {env.build_s:.1f} s")
    print(f"device venv [{args.extras}]: {env.size_mib:.0f} MiB on disk, install {env.install_s:.1f} s; "
          f"laptop-only packages present: {present or 'none'}")  # fmt: skip
    imports = []
    for _ in range(ROUNDS):
        code = "import time; t = time.perf_counter(); import edge_runtime.api; print(time.perf_counter() - t)"
        imports.append(float(subprocess.run([env.python, "-c", code], capture_output=True, text=True, check=True,
                                            env=env.env()).stdout))  # fmt: skip
    print(f"import edge_runtime.api: median {1000 * statistics.median(imports):.0f} ms over {ROUNDS} interpreters")
    pkg, pub = _signed_package(work)
    clip = write_video(work / "one.avi", [np.full((480, 640, 3), 80, np.uint8)])
    run_args = ["run", "--package", str(pkg), "--key", str(pub), "--source", str(clip), "--no-summary"]
    firsts, totals = zip(*(_cold_start(env.cli, env.env(), run_args, work / "one.jsonl") for _ in range(ROUNDS)),
                         strict=True)  # fmt: skip
    print(f"cold start of `edge-runtime run` (signed .erpkg, int8 TFLite, 1 frame 640x480): first result "
          f"median {statistics.median(firsts):.2f} s, exit median {statistics.median(totals):.2f} s "
          f"(min {min(totals):.2f}, max {max(totals):.2f}) over {ROUNDS} runs")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
