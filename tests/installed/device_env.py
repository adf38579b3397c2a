"""Build the product as a device gets it: a wheel of this checkout, installed with only the device extras into a
fresh virtual environment (no TensorFlow, no torch), timed and measured.

Used by the installed-product tests and by ``benchmarks/device_install_figures.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEVICE_EXTRAS = "device"  # what the README's device step installs: tflite, sensors, monitor
LAPTOP_ONLY = ("tensorflow", "torch", "keras", "tf2onnx", "onnx", "sklearn")


@dataclass(frozen=True)
class DeviceEnv:
    """A fresh venv holding the installed wheel; the figures a closing note quotes."""

    root: Path
    wheel: Path
    build_s: float
    install_s: float
    size_mib: float

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> str:
        return str(self.bin / "python")

    @property
    def cli(self) -> list[str]:
        return [str(self.bin / "edge-runtime")]

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: nothing from this checkout on PYTHONPATH, the venv first on PATH."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return {**env, **extra}

    def importable(self, names: tuple[str, ...]) -> list[str]:
        code = "import importlib.util, sys; print(' '.join(n for n in sys.argv[1:] if importlib.util.find_spec(n)))"
        out = subprocess.run([self.python, "-c", code, *names], capture_output=True, text=True, check=True,
                             env=self.env(), cwd=self.root)  # fmt: skip
        return out.stdout.split()


def _tracked_copy(dest: Path) -> Path:
    """The files a clean clone has (git ls-files), so a stale build/ or a local venv never leaks into the wheel."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                               capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    for name in filter(None, names):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _du_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def build_device_env(work: Path, extras: str = DEVICE_EXTRAS) -> DeviceEnv:
    """Wheel from a copy of the tracked tree, then ``pip install 'edge-runtime[EXTRAS]'`` into work/venv."""
    work.mkdir(parents=True, exist_ok=True)
    src, dist, venv = work / "src", work / "dist", work / "venv"
    start = time.monotonic()
    _tracked_copy(src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(dist)], check=True, capture_output=True)  # fmt: skip
    wheel = next(dist.glob("edge_runtime-*.whl"))
    build_s = time.monotonic() - start
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    proc = subprocess.run([*pip, f"{wheel}[{extras}]"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install of the wheel failed: {proc.stderr.strip()[-2000:]}")
    install_s = time.monotonic() - start
    env = DeviceEnv(venv, wheel, build_s, install_s, _du_mib(venv))
    (work / "figures.json").write_text(json.dumps({k: str(v) for k, v in asdict(env).items()}, indent=2))
    return env
