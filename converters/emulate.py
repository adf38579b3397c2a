"""Run a package on an emulated arm64 CPU (QEMU user mode) and compare its outputs with this host's, before shipping.

A package that runs on the x86 laptop can still fail on a Raspberry Pi or Jetson: a wheel missing for aarch64, an
operator the arm64 build lacks, different int8 rounding. This module prepares (once, cached) a Debian 12 arm64
userland with only the device dependencies (``converters/arm64/prepare.py``), runs the package's golden inputs there
with ``converters/arm64/device_check.py`` on the profile's CPU (``cpu.qemu_cpu``), runs the same script on this host,
and compares: integer outputs within one quantization step, float outputs within ``FLOAT_RTOL`` of the output's
range, classifier top-1 identical. Timings under emulation mean nothing and are never reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.package import Package, load_package
from edge_runtime.profiles import DeviceProfile, load_profile

SCRIPTS = Path(__file__).resolve().parent / "arm64"  # ships inside the package (works from a wheel)
FLOAT_RTOL = 1e-4  # float outputs: |arm64 - x86| <= FLOAT_RTOL * max(1, max |x86|)
INT_STEPS = 1  # int8/uint8 outputs: at most one quantization step apart
DEFAULT_TIMEOUT_S = 600.0


class EmulationError(EdgeRuntimeError):
    """The emulator or its root file system cannot be prepared, or the emulated run failed to start or finish."""


@dataclass(frozen=True)
class Arm64Environment:
    """Paths of a prepared environment (see converters/arm64/prepare.py)."""

    qemu: str
    qemu_version: str
    rootfs: str
    python: str
    site: str
    project: str

    def command(self, cpu: str, args: Sequence[str]) -> list[str]:
        """argv running ``python3.11 ARGS`` under qemu-aarch64 with this CPU model."""
        return [self.qemu, "-cpu", cpu, "-L", self.rootfs, self.rootfs + self.python, *args]

    def env(self, home: str) -> dict[str, str]:
        """A clean environment: only the device dependencies and edge_runtime are importable."""
        return {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": os.pathsep.join([self.project, self.site]),
            "PYTHONNOUSERSITE": "1",
            "PYTHONHASHSEED": "0",
            "HOME": home,
            "LANG": "C.UTF-8",
            "TMPDIR": home,
            "EDGE_RUNTIME_CACHE": str(Path(home) / "cache"),
        }


@dataclass(frozen=True)
class TensorCheck:
    """One output tensor of one golden pair, arm64 against x86."""

    pair: int
    index: int
    name: str
    dtype: str
    max_abs_diff: float
    tolerance: float
    passed: bool


@dataclass(frozen=True)
class PreprocessCheck:
    """One image input made from the same frame on both sides (resize, colour, normalisation, quantization)."""

    name: str
    dtype: str
    max_abs_diff: float
    share_differing: float
    level: float  # what one 8-bit input level changes in this tensor; the tolerance


@dataclass(frozen=True)
class EmulationReport:
    """Result of running a package's golden inputs under emulation and comparing them with this host."""

    package: str
    profile: str
    qemu_cpu: str
    qemu_version: str
    pairs: int
    ran_with: str
    device: dict[str, Any]
    tensors: tuple[TensorCheck, ...]
    top1: tuple[int, int] | None = None  # (identical, total) for classifiers
    problems: tuple[str, ...] = field(default=())
    preprocess: tuple[PreprocessCheck, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """Human summary: what ran where, the largest difference per output, and the verdict."""
        d = self.device
        out = [
            f"emulated  {self.profile} on {self.qemu_version}, -cpu {self.qemu_cpu}: {d.get('machine')} "
            f"Python {d.get('python')}, {self.ran_with}",
            "device    only device dependencies: " + ", ".join(f"{k} {v}" for k, v in d.get("versions", {}).items()),
            "backends  "
            + ", ".join(f"{n} {'ok' if r is None else 'unavailable'}" for n, r in d.get("backends", {}).items()),
        ]
        worst: dict[int, TensorCheck] = {}
        for t in self.tensors:
            if t.index not in worst or t.max_abs_diff > worst[t.index].max_abs_diff:
                worst[t.index] = t
        for t in worst.values():
            out.append(f"output    {t.name} ({t.dtype}): max |arm64 - x86| {t.max_abs_diff:.3g} "
                       f"(tolerance {t.tolerance:.3g}) over {self.pairs} golden input(s)")  # fmt: skip
        for c in self.preprocess:
            out.append(f"preproc   {c.name} ({c.dtype}): {100 * c.share_differing:.1f}% of values differ, max "
                       f"{c.max_abs_diff:.3g} (one 8-bit level is {c.level:.3g})")  # fmt: skip
        if self.top1 is not None:
            out.append(f"top-1     identical for {self.top1[0]}/{self.top1[1]} golden input(s)")
        out += [f"FAIL      {p}" for p in self.problems]
        out.append("result    " + ("arm64 outputs match x86" if self.passed else "arm64 outputs DIFFER from x86"))
        return out


def prepare_environment(cache: str | Path | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Arm64Environment:
    """Prepare (or reuse from the cache) the arm64 environment; progress goes to stderr."""
    script = SCRIPTS / "prepare.py"
    if not script.is_file():
        raise EmulationError(f"{script} is missing: reinstall edge-runtime with the [convert] extra")
    cmd = [sys.executable, str(script), "--json"] + (["--cache", str(cache)] if cache else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise EmulationError(f"preparing the arm64 environment took over {timeout_s:.0f} s") from exc
    sys.stderr.write("".join(ln + "\n" for ln in proc.stderr.splitlines() if ln.startswith("[arm64]")))
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        reason = errors[-1][len("error: ") :] if errors else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EmulationError(reason)
    paths = json.loads(proc.stdout)
    return Arm64Environment(**{k: paths[k] for k in Arm64Environment.__dataclass_fields__})


def qemu_cpu_for(profile: str | DeviceProfile) -> tuple[str, str]:
    """(profile name, QEMU -cpu model) of an arm64 device profile."""
    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    if prof.cpu.arch != "aarch64" or not prof.cpu.qemu_cpu:
        raise EmulationError(f"profile {prof.name} is not an emulated arm64 device (cpu.arch {prof.cpu.arch}, "
                             "no cpu.qemu_cpu); pick e.g. raspberry-pi-4")  # fmt: skip
    return prof.name, prof.cpu.qemu_cpu


def run_emulated(
    env: Arm64Environment, cpu: str, args: Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_S, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python3.11 ARGS`` under qemu-aarch64 (e.g. ``["-m", "edge_runtime.cli", "run", ...]``).

    The working directory defaults to an empty temporary home, so nothing from the caller's folder (a checkout
    with ``converters/``) is importable through ``sys.path[0]``.
    """
    with tempfile.TemporaryDirectory(prefix="arm64-home-") as home:
        try:
            return subprocess.run(env.command(cpu, args), env=env.env(home), cwd=cwd or home, capture_output=True,
                                  text=True, timeout=timeout_s)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise EmulationError(f"the emulated run ({' '.join(args[:3])} ...) took over {timeout_s:.0f} s") from exc
        except OSError as exc:
            raise EmulationError(f"cannot start {env.qemu}: {exc.strerror}") from exc


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _device_check(package: Path, profile: str, work: Path, tag: str, run: Any) -> tuple[dict, Path]:
    """Run converters/arm64/device_check.py through ``run`` (host or emulator); return its report and outputs file."""
    out, report = work / f"{tag}.npz", work / f"{tag}.json"
    args = [str(SCRIPTS / "device_check.py"), "--package", str(package), "--profile", profile, "--threads", "1",
            "--out", str(out), "--report", str(report)]  # fmt: skip
    proc = run(args)
    if proc.returncode != 0 or not report.is_file():
        raise EmulationError(f"the {tag} run of {package.name} failed: {_last_line(proc)}")
    return json.loads(report.read_text()), out


def _tolerance(ref: np.ndarray) -> float:
    if ref.dtype.kind in "iu":
        return float(INT_STEPS)
    return FLOAT_RTOL * max(1.0, float(np.abs(ref).max(initial=0.0)))


Comparison = tuple[tuple[TensorCheck, ...], tuple[int, int] | None, list[str]]


def _score_index(pkg: Package) -> int | None:
    """Index of a classifier's score output (top-1 must match), else None."""
    m = pkg.manifest
    if m.outputs.decoding.type != "classification":
        return None
    return [t.name for t in m.outputs.tensors].index(m.outputs.decoding.output)


def compare_outputs(pkg: Package, x86: Path, arm: Path) -> Comparison:
    """Per-tensor differences, classifier top-1 agreement, and the problems found."""
    names = [t.name for t in pkg.manifest.outputs.tensors]
    checks, problems, agree, total = [], [], 0, 0
    score = _score_index(pkg)
    with np.load(x86) as ref_npz, np.load(arm) as got_npz:
        keys = sorted((k for k in ref_npz.files if k.startswith("output_")), key=lambda k: (len(k), k))
        if keys != sorted((k for k in got_npz.files if k.startswith("output_")), key=lambda k: (len(k), k)):
            return (), None, [f"arm64 returned outputs {sorted(got_npz.files)}, x86 {sorted(ref_npz.files)}"]
        for key in keys:
            i, k = (int(p) for p in key.split("_")[1:])
            ref, got = ref_npz[key], got_npz[key]
            name = names[k] if k < len(names) else f"output {k}"
            if ref.shape != got.shape or ref.dtype != got.dtype:
                problems.append(
                    f"pair {i} {name}: arm64 {got.dtype}{list(got.shape)}, x86 {ref.dtype}{list(ref.shape)}"
                )
                continue
            diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0))
            tol = _tolerance(ref)
            checks.append(TensorCheck(i, k, name, str(ref.dtype), diff, tol, diff <= tol))
            if diff > tol:
                problems.append(f"pair {i} {name}: max |arm64 - x86| {diff:.4g} exceeds {tol:.4g}")
            if k == score:
                total += 1
                same = int(ref.reshape(-1).argmax()) == int(got.reshape(-1).argmax())
                agree += same
                if not same:
                    problems.append(f"pair {i}: top-1 class differs (x86 {ref.reshape(-1).argmax()}, "
                                    f"arm64 {got.reshape(-1).argmax()})")  # fmt: skip
    return tuple(checks), ((agree, total) if score is not None else None), problems


def compare_preprocessing(pkg: Package, x86: Path, arm: Path) -> tuple[tuple[PreprocessCheck, ...], list[str]]:
    """The same frame preprocessed on both sides: differences beyond one 8-bit level of the input are a problem."""
    from edge_runtime.preprocess import build_lut

    checks, problems = [], []
    with np.load(x86) as ref_npz, np.load(arm) as got_npz:
        for i, spec in enumerate(pkg.manifest.inputs):
            keys = sorted(k for k in ref_npz.files if k.startswith(f"preprocess_{i}_"))
            if not keys or any(k not in got_npz.files for k in keys):
                continue
            ref = np.concatenate([ref_npz[k].astype(np.float64).ravel() for k in keys])
            got = np.concatenate([got_npz[k].astype(np.float64).ravel() for k in keys])
            level = float(np.abs(np.diff(build_lut(spec).astype(np.float64), axis=-1)).max())  # one 8-bit level
            diff = np.abs(got - ref)
            check = PreprocessCheck(
                spec.name, spec.dtype, float(diff.max(initial=0.0)), float((diff > 0).mean()), level
            )
            checks.append(check)
            if check.max_abs_diff > level * (1 + 1e-6):
                problems.append(f"input {spec.name}: preprocessing differs by {check.max_abs_diff:.4g} "
                                f"(more than one 8-bit level, {level:.4g})")  # fmt: skip
    return tuple(checks), problems


def run_golden_emulated(
    package_dir: str | Path | Package,
    profile: str | DeviceProfile,
    cache: str | Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> EmulationReport:
    """Run the package's golden inputs on the profile's emulated arm64 CPU and on this host; compare the outputs."""
    pkg = package_dir if isinstance(package_dir, Package) else load_package(package_dir, allow_unsigned=True)
    if pkg.manifest.golden is None:
        raise EmulationError(f"package {pkg.manifest.name} has no golden set to run (the converter writes one)")
    name, cpu = qemu_cpu_for(profile)
    env = prepare_environment(cache, timeout_s)
    with tempfile.TemporaryDirectory(prefix="arm64-check-") as tmp:
        work = Path(tmp)
        x86_report, x86_out = _device_check(
            pkg.root, name, work, "x86", lambda args: _host_run([sys.executable, *args, "--host"], timeout_s)
        )
        device, arm_out = _device_check(pkg.root, name, work, "arm64", lambda a: run_emulated(env, cpu, a, timeout_s))
        checks, top1, problems = compare_outputs(pkg, x86_out, arm_out)
        pre_checks, pre_problems = compare_preprocessing(pkg, x86_out, arm_out)
        problems += pre_problems
    if device.get("machine") != "aarch64":
        problems.insert(0, f"the emulated interpreter reports machine {device.get('machine')!r}, not aarch64")
    if device.get("ran_with") != x86_report.get("ran_with"):
        problems.append(f"arm64 ran with {device.get('ran_with')}, x86 with {x86_report.get('ran_with')}")
    return EmulationReport(
        package=f"{pkg.manifest.name} {pkg.manifest.version}",
        profile=name,
        qemu_cpu=cpu,
        qemu_version=env.qemu_version,
        pairs=int(device.get("pairs", 0)),
        ran_with=str(device.get("ran_with")),
        device=device,
        tensors=checks,
        top1=top1,
        problems=tuple(problems),
        preprocess=pre_checks,
    )


def _host_run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)


def verify_emulated(pkg: Package, profile_name: str) -> int:
    """`edge-runtime verify PKG --emulate PROFILE`: print the comparison; 0 when arm64 matches x86, else 1."""
    report = run_golden_emulated(pkg, profile_name)
    print("\n".join(report.lines()))
    return 0 if report.passed else 1
