"""Golden smoke test: before a device trusts a (new) model, it replays the package's golden input/output pairs.

Outputs are compared dequantized, each within its own ``atol_per_output`` when the golden set gives them, else
within the one ``atol``; for classifiers with ``top1_must_match`` the top-1 class must also agree. Inference
latency is measured over the pairs and checked against a budget (p95). The OTA updater runs this after
installing a package and rolls back when it fails.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.api import Model, load
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.package.manifest import ClassificationDecoding, GoldenSet, Manifest
from edge_runtime.package.signing import TrustStore
from edge_runtime.profiles import DeviceProfile
from edge_runtime.quant import dequantize

MIN_TIMED_RUNS = 10


@dataclass(frozen=True)
class SmokeReport:
    """Outcome of a smoke test. ``reasons`` says why it failed (empty when it passed)."""

    passed: bool
    reasons: tuple[str, ...]
    pairs: int = 0
    max_abs_error: float = 0.0
    top1_mismatches: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    budget_ms: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


class GoldenError(EdgeRuntimeError):
    """The golden set cannot be read."""


def _load_pairs(model: Model, golden: GoldenSet) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    m = model.manifest
    try:
        with np.load(model.package.path(golden.file), allow_pickle=False) as npz:
            return [
                (
                    [npz[f"input_{i}_{k}"] for k in range(len(m.inputs))],
                    [npz[f"output_{i}_{k}"] for k in range(len(m.outputs.tensors))],
                )
                for i in range(golden.count)
            ]
    except (OSError, KeyError, ValueError) as exc:
        raise GoldenError(f"golden file {golden.file} is unreadable or incomplete: {exc}") from exc


def _class_output(manifest: Manifest) -> int | None:
    dec = manifest.outputs.decoding
    if not isinstance(dec, ClassificationDecoding):
        return None
    return [t.name for t in manifest.outputs.tensors].index(dec.output)


def _compare(
    manifest: Manifest, golden: GoldenSet, i: int, got: list[np.ndarray], want: list[np.ndarray]
) -> tuple[float, bool, list[str]]:
    """(max abs error, top-1 mismatch, reasons) for one pair."""
    reasons, worst = [], 0.0
    specs = manifest.outputs.tensors
    atols = golden.atol_per_output or (golden.atol,) * len(specs)
    for spec, atol, g, w in zip(specs, atols, got, want, strict=True):
        gd, wd = dequantize(np.asarray(g), spec.quantization), dequantize(np.asarray(w), spec.quantization)
        if gd.shape != wd.shape:
            reasons.append(f"pair {i} output {spec.name}: shape {list(gd.shape)} != golden {list(wd.shape)}")
            continue
        err = float(np.max(np.abs(gd - wd))) if gd.size else 0.0
        worst = max(worst, err)
        if not err <= atol:  # also catches NaN
            reasons.append(f"pair {i} output {spec.name}: max abs error {err:.4g} > atol {atol:.4g}")
    k = _class_output(manifest)
    mismatch = False
    if golden.top1_must_match and k is not None and got[k].size and want[k].size:
        a, b = int(np.argmax(got[k])), int(np.argmax(want[k]))
        if a != b:
            mismatch = True
            reasons.append(f"pair {i}: top-1 class {a} != golden {b}")
    return worst, mismatch, reasons


def _latencies(model: Model, feeds: list[list[np.ndarray]], runs: int) -> np.ndarray:
    model.invoke(feeds[0])  # warm-up: first calls allocate and pack weights
    times = []
    for n in range(max(runs, len(feeds))):
        t0 = time.perf_counter()
        model.invoke(feeds[n % len(feeds)])
        times.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(times)


def _zero_inputs(manifest: Manifest) -> list[np.ndarray]:
    out = []
    for spec in manifest.inputs:
        zero = spec.quantization.zero_point[0] if spec.quantization else 0
        out.append(np.full(tuple(max(d, 1) for d in spec.shape), zero, dtype=np.dtype(spec.dtype)))
    return out


def smoke_test(model: Model, budget_ms: float | None = None, runs: int = MIN_TIMED_RUNS) -> SmokeReport:
    """Replay the golden pairs through ``model``; check outputs, top-1 and (when given) the p95 latency budget.

    A package without a golden set is only checked for running and latency (on zero inputs).
    """
    m = model.manifest
    reasons: list[str] = []
    worst, mismatches = 0.0, 0
    try:
        pairs = _load_pairs(model, m.golden) if m.golden else [(_zero_inputs(m), [])]
        for i, (inputs, expected) in enumerate(pairs):
            got = model.invoke(inputs)
            if m.golden:
                err, mismatch, why = _compare(m, m.golden, i, got, expected)
                worst, mismatches, reasons = max(worst, err), mismatches + mismatch, reasons + why
        times = _latencies(model, [p[0] for p in pairs], runs)
    except EdgeRuntimeError as exc:
        return SmokeReport(False, (*reasons, f"model failed to run: {exc}"), budget_ms=budget_ms)
    p50, p95 = float(np.percentile(times, 50)), float(np.percentile(times, 95))
    if budget_ms is not None and p95 > budget_ms:
        reasons.append(f"latency p95 {p95:.2f} ms exceeds the budget of {budget_ms:.2f} ms")
    return SmokeReport(
        passed=not reasons,
        reasons=tuple(reasons),
        pairs=len(pairs) if m.golden else 0,
        max_abs_error=worst,
        top1_mismatches=mismatches,
        latency_ms_p50=p50,
        latency_ms_p95=p95,
        budget_ms=budget_ms,
    )


def smoke_test_package(
    package: str | Path,
    *,
    trust: TrustStore | None = None,
    profile: str | DeviceProfile | None = None,
    budget_ms: float | None = None,
    allow_unsigned: bool = False,
) -> SmokeReport:
    """Load (verifying hashes and signature), smoke-test and close a package; a load failure is a failed report.

    Without ``budget_ms`` the profile's ``budgets.latency_ms_p95`` is used when a profile is known.
    """
    try:
        model = load(package, trust=trust, profile=profile, allow_unsigned=allow_unsigned)
    except EdgeRuntimeError as exc:
        return SmokeReport(False, (f"cannot load package: {exc}",), budget_ms=budget_ms)
    with model:
        if budget_ms is None and model.profile is not None:
            budget_ms = model.profile.budgets.latency_ms_p95
        return smoke_test(model, budget_ms)
