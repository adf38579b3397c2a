#!/usr/bin/env python3
"""Prepare, once and cached, an arm64 userland in which the device runtime runs under QEMU user-mode emulation.

Four parts, each cached under ``${EDGE_RUNTIME_ARM64_CACHE:-~/.cache/edge-runtime/arm64}`` in a folder named by a
hash of what went into it, so a second run only checks that the folders exist:

- ``rootfs-*``  Debian 12 (bookworm) arm64 with Python 3.11, the Python of Raspberry Pi OS Bookworm:
  ``debootstrap --foreign --variant=minbase --include=python3``, then ``dpkg -x`` of every downloaded .deb (no
  second stage is needed to run Python, and none could run without binfmt_misc).
- ``qemu-*``    ``qemu-aarch64`` from Debian 13's ``qemu-user`` (QEMU 10, static), fetched by apt with a temporary
  source list so the host's apt configuration is left alone. Debian 12's QEMU 7.2 segfaults in onnxruntime and LiteRT.
- ``site-*``    aarch64 wheels of the device dependencies only (no TensorFlow, no torch), cross-installed with
  ``pip --target --only-binary=:all: --platform manylinux_*_aarch64``, pinned to the versions installed on this
  host so x86 and arm64 outputs differ by architecture, not by library version.
- ``project-*`` a copy of the ``edge_runtime`` package this host imports (a checkout or an installed wheel) with
  its built-in device profiles under ``edge_runtime/device_profiles/`` (never ``converters/``).

Usage: ``prepare.py [--cache DIR] [--json]``. Prints progress on stderr and, with ``--json``, the paths on stdout.
On failure it prints one line (what failed and what to install) and exits with status 2.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RECIPE_VERSION = 1  # bump when a step below changes what ends up in a cached folder
MIRROR = os.environ.get("EDGE_RUNTIME_ARM64_MIRROR", "http://deb.debian.org/debian")
ROOTFS_SUITE = "bookworm"
QEMU_SUITE = "trixie"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEVICE_DEPS = (
    "numpy",
    "onnxruntime",
    "ai-edge-litert",
    "opencv-python-headless",
    "pydantic",
    "pydantic-core",
    "PyYAML",
    "psutil",
    "cryptography",
    "paho-mqtt",
)
PLATFORMS = ("manylinux_2_17_aarch64", "manylinux2014_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64",
             "manylinux_2_31_aarch64", "manylinux_2_34_aarch64", "manylinux_2_35_aarch64")  # fmt: skip
# Where the host tools (debootstrap, apt-get, dpkg) are looked up; root's sbin folders are often not on PATH.
SYSTEM_PATH = os.environ.get("EDGE_RUNTIME_ARM64_TOOLS_PATH") or os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]
)
# Host tools each part needs when it is not cached yet: (command, Debian package providing it).
TOOLS = {
    "rootfs": (("debootstrap", "debootstrap"), ("dpkg", "dpkg")),
    "qemu": (("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("tar", "tar")),
    "site": (),
    "project": (),
}


class PrepareError(Exception):
    """The emulated environment could not be prepared; the message says what to install or fix."""


def log(msg: str) -> None:
    print(f"[arm64] {msg}", file=sys.stderr, flush=True)


def default_cache() -> Path:
    return Path(os.environ.get("EDGE_RUNTIME_ARM64_CACHE", Path.home() / ".cache" / "edge-runtime" / "arm64"))


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps([RECIPE_VERSION, *parts], default=str).encode()).hexdigest()[:16]


def _tool(name: str, package: str) -> str:
    found = shutil.which(name, path=SYSTEM_PATH)
    if not found:
        raise PrepareError(f"cannot prepare the arm64 emulation: '{name}' is not installed (apt-get install {package})")
    return found


def _run(cmd: list[str], what: str, hint: str, cwd: Path | None = None) -> None:
    """Run a command; on failure raise PrepareError with its last output line and a hint."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PATH": SYSTEM_PATH})
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise PrepareError(f"cannot prepare the arm64 emulation: {what} failed ({last}); {hint}")


def _cached(cache: Path, prefix: str, key: str, build: Callable[[Path], None]) -> Path:
    """Return cache/prefix-key, building it first in a temporary folder renamed into place when complete."""
    final = cache / f"{prefix}-{key}"
    if (final / ".complete").is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=cache))
    try:
        start = time.monotonic()
        build(tmp)
        (tmp / ".complete").write_text(f"{key}\n")
        if final.exists():  # a crashed earlier build, or a concurrent one that finished first
            if (final / ".complete").is_file():
                return final
            shutil.rmtree(final)
        os.rename(tmp, final)
        log(f"{prefix} ready in {time.monotonic() - start:.0f} s: {final}")
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_prerequisites(parts: list[str]) -> None:
    """Before any download: every host tool the parts still to build need, with what to install."""
    missing = sorted({pkg for part in parts for tool, pkg in TOOLS[part] if not shutil.which(tool, path=SYSTEM_PATH)})
    if missing:
        raise PrepareError(
            f"cannot prepare the arm64 emulation: host tools missing (apt-get install {' '.join(missing)})"
        )
    if "rootfs" in parts:
        _root_prefix()
    if "qemu" in parts and not Path(KEYRING).is_file():
        raise PrepareError(f"cannot fetch QEMU: {KEYRING} is missing (apt-get install debian-archive-keyring)")
    if "site" in parts:
        probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, check=False)
        if probe.returncode != 0:
            raise PrepareError(f"cannot install the aarch64 wheels: {sys.executable} has no pip "
                               "(python -m ensurepip)")  # fmt: skip


def _root_prefix() -> list[str]:
    """debootstrap creates device nodes and chowns files: as root, or under fakeroot."""
    if os.geteuid() == 0:
        return []
    if shutil.which("fakeroot", path=SYSTEM_PATH):
        return ["fakeroot"]
    raise PrepareError("cannot prepare the arm64 root file system: debootstrap needs root (run as root, or "
                       "apt-get install fakeroot)")  # fmt: skip


def build_rootfs(dest: Path) -> None:
    """Debian 12 arm64 minbase + python3, first stage only, then every downloaded .deb unpacked with dpkg -x."""
    debootstrap = _tool("debootstrap", "debootstrap")
    dpkg = _tool("dpkg", "dpkg")
    root = dest / "root"
    log(f"debootstrap --foreign arm64 {ROOTFS_SUITE} from {MIRROR}")
    cmd = [*_root_prefix(), debootstrap, "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3",
           ROOTFS_SUITE, str(root), MIRROR]  # fmt: skip
    _run(cmd, "debootstrap", f"check access to {MIRROR} (or set EDGE_RUNTIME_ARM64_MIRROR)")
    archives = root / "var" / "cache" / "apt" / "archives"
    debs = sorted(archives.glob("*.deb"))
    if not debs:
        raise PrepareError(f"cannot prepare the arm64 root file system: debootstrap left no .deb files in {archives}")
    for deb in debs:
        _run([dpkg, "-x", str(deb), str(root)], f"dpkg -x {deb.name}", "is the download complete?")
        deb.unlink()
    python = root / "usr" / "bin" / "python3.11"
    if not python.is_file():
        raise PrepareError(f"cannot prepare the arm64 root file system: {python} is missing after unpacking")
    # Byte-compile the standard library with this host's 3.11 (.pyc files do not depend on the CPU), so the
    # emulated interpreter does not compile it again on every run.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(root / "usr/lib/python3.11")],
                   capture_output=True, check=False)  # fmt: skip


def build_qemu(dest: Path) -> None:
    """qemu-aarch64 (QEMU 10) from Debian 13's qemu-user, via apt with a throw-away source list and state dirs."""
    apt_get = _tool("apt-get", "apt")
    dpkg_deb = _tool("dpkg-deb", "dpkg")
    work = dest / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "download"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "sources.list").write_text(f"deb [signed-by={KEYRING}] {MIRROR} {QEMU_SUITE} main\n")
    opts = [f"-oDir::Etc::SourceList={work / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={work / 'lists'}", f"-oDir::Cache={work / 'cache'}", "-oAPT::Sandbox::User=root",
            "-oAPT::Get::List-Cleanup=0", "-oDebug::NoLocking=1", "-q"]  # fmt: skip
    log(f"apt-get download qemu-user ({QEMU_SUITE})")
    hint = f"check access to {MIRROR} (or set EDGE_RUNTIME_ARM64_MIRROR)"
    _run([apt_get, *opts, "update"], f"apt-get update for {QEMU_SUITE}", hint)
    _run([apt_get, *opts, "download", "qemu-user"], "apt-get download qemu-user", hint, cwd=work / "download")
    debs = list((work / "download").glob("qemu-user_*.deb"))
    if not debs:
        raise PrepareError("cannot prepare QEMU: apt-get download qemu-user produced no .deb")
    # Only the one binary is needed: stream the data archive through tar instead of unpacking 300 MB.
    extract = f"'{dpkg_deb}' --fsys-tarfile '{debs[0]}' | tar -x -C '{dest}' ./usr/bin/qemu-aarch64"
    _run(["bash", "-o", "pipefail", "-c", extract], "unpacking qemu-aarch64", "is tar installed?")
    shutil.rmtree(work)
    qemu = dest / "usr" / "bin" / "qemu-aarch64"
    version = subprocess.run([str(qemu), "--version"], capture_output=True, text=True, check=False).stdout
    if not version.startswith("qemu-aarch64 version"):
        raise PrepareError(f"cannot prepare QEMU: {qemu} does not run on this host ({version.strip() or 'no output'})")
    (dest / "VERSION").write_text(version.splitlines()[0] + "\n")


def pinned_requirements() -> list[str]:
    """Device dependencies pinned to this host's installed versions (unpinned where not installed here)."""
    reqs = []
    for name in DEVICE_DEPS:
        try:
            reqs.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def build_site(dest: Path, requirements: list[str]) -> None:
    """Cross-install aarch64 CPython 3.11 wheels (binary only) into dest/site."""
    site = dest / "site"
    log(f"pip install aarch64 wheels: {' '.join(requirements)}")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
           "--target", str(site), "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
           "--abi", "cp311", "--abi", "abi3", "--abi", "none"]  # fmt: skip
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    _run(cmd + requirements, "pip install of the aarch64 wheels", "check access to the package index (pip config)")
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(site)], capture_output=True, check=False)


def runtime_package_dir() -> Path:
    """The ``edge_runtime`` package this host imports: a source checkout or an installed wheel."""
    spec = importlib.util.find_spec("edge_runtime")
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError("cannot find the edge_runtime package: is edge-runtime installed?")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _project_files(package: Path) -> list[tuple[Path, str]]:
    """(file, path inside the copy): the package, and its built-in profiles under edge_runtime/device_profiles/."""
    files = [(p, "edge_runtime/" + p.relative_to(package).as_posix()) for p in sorted(package.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts]  # fmt: skip
    if not (package / "device_profiles").is_dir():  # a checkout: the profiles sit at the top of the repository
        files += [(p, f"edge_runtime/device_profiles/{p.name}")
                  for p in sorted((package.parent / "device_profiles").glob("*.yaml"))]  # fmt: skip
    return files


def project_key(package: Path) -> str:
    h = hashlib.sha256()
    for f, rel in _project_files(package):
        h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_project(dest: Path, package: Path) -> None:
    for f, rel in _project_files(package):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)


def prune_projects(cache: Path, keep: Path, count: int = 4) -> None:
    """Drop all but the newest few project copies (one is made for every edit of edge_runtime/)."""
    copies = sorted(cache.glob("project-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [c for c in copies if c != keep][count - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def prepare(cache: Path | None = None, package: Path | None = None) -> dict[str, str]:
    """Build (or reuse) every part; return the paths the emulated run needs."""
    cache = (cache or default_cache()).expanduser().resolve()
    package = package or runtime_package_dir()
    reqs = pinned_requirements()
    keys = {
        "rootfs": _digest(ROOTFS_SUITE, "minbase", "python3"),
        "qemu": _digest(QEMU_SUITE, "qemu-user"),
        "site": _digest(reqs, PLATFORMS),
        "project": project_key(package),
    }
    builders: dict[str, Callable[[Path], None]] = {
        "rootfs": build_rootfs,
        "qemu": build_qemu,
        "site": lambda d: build_site(d, reqs),
        "project": lambda d: build_project(d, package),
    }
    check_prerequisites([p for p, k in keys.items() if not (cache / f"{p}-{k}" / ".complete").is_file()])
    jobs = {part: (lambda part=part: _cached(cache, part, keys[part], builders[part])) for part in keys}
    # The downloads are independent: run them side by side (network and CPU overlap on a 2-core machine).
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        done = {name: f.result() for name, f in futures.items()}
    prune_projects(cache, done["project"])
    return {
        "rootfs": str(done["rootfs"] / "root"),
        "python": "/usr/bin/python3.11",
        "qemu": str(done["qemu"] / "usr" / "bin" / "qemu-aarch64"),
        "qemu_version": (done["qemu"] / "VERSION").read_text().strip(),
        "site": str(done["site"] / "site"),
        "project": str(done["project"]),
        "requirements": " ".join(reqs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="cache folder (default: $EDGE_RUNTIME_ARM64_CACHE or "
                        "~/.cache/edge-runtime/arm64)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the prepared paths as JSON on stdout")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        env = prepare(args.cache)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log(f"environment ready ({time.monotonic() - start:.1f} s)")
    print(json.dumps(env, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in env.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
