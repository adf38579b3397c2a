"""Run variants side by side: one worker process per variant, timed rounds interleaved (A B C A B C ...).

Loading and warm-up go one variant at a time; then each round gives every live variant its share of the timed
runs in turn, so slow drifts of a shared machine hit all variants alike and per-round ratios cancel them.
Only one worker computes at any moment. A variant that fails (load error, crash, timeout) is marked skipped
with the reason and the others go on.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from edge_runtime.benchmark import BenchmarkError
from edge_runtime.benchmark.accuracy import ValidationData, score_outputs
from edge_runtime.benchmark.machine import describe_machine
from edge_runtime.benchmark.schema import BenchReport, BenchSettings, VariantResult
from edge_runtime.benchmark.stats import paired_speedup, ratio_rel_spread, round_medians, split_runs, summarize
from edge_runtime.benchmark.variants import Variant

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    """How to measure (validated by the command before any work starts)."""

    warmup: int = 10
    runs: int | None = 100
    min_time_s: float | None = None
    rounds: int = 10
    seed: int = 0
    validation: ValidationData | None = None
    baseline: str | None = None
    noise_threshold: float = 0.10
    call_timeout_s: float = 300.0
    reference_name: str | None = None


@dataclass
class BenchRun:
    """A finished run: the JSON report plus the raw samples the plots need."""

    report: BenchReport
    samples_ms: dict[str, list[float]] = field(default_factory=dict)


class WorkerFailed(Exception):
    """The worker refused a request, crashed or timed out."""


class Worker:
    """Parent side of one worker process."""

    def __init__(self, variant: Variant, seed: int) -> None:
        env = dict(os.environ, PYTHONHASHSEED=str(seed), OMP_NUM_THREADS=str(variant.threads),
                   TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
        self.stderr: IO[bytes] = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime.benchmark.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env,
        )

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = [ln for ln in self.stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1][:300] if lines else ""

    def call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerFailed(self._died()) from None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            self.close()
            raise WorkerFailed(f"no answer to '{request['cmd']}' within {timeout_s:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerFailed(self._died())
        reply = json.loads(line)
        if not reply.get("ok"):
            raise WorkerFailed(str(reply.get("reason", "failed")))
        return reply

    def _died(self) -> str:
        code = self.proc.wait(timeout=10)
        tail = self._stderr_tail()
        return f"worker process died (exit code {code})" + (f": {tail}" if tail else "")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.stderr):
            if f is not None:
                f.close()


@dataclass
class _Live:
    variant: Variant
    result: VariantResult
    worker: Worker
    rounds: list[list[float]] = field(default_factory=list)


def _result(v: Variant) -> VariantResult:
    return VariantResult(
        id=v.id, model=v.model.name, path=v.model.given, format=v.model.format, precision=v.model.precision,
        backend=v.backend, threads=v.threads, status="skipped" if v.skip_reason else "ok", reason=v.skip_reason,
        file_size_bytes=v.file_size,
    )


def _skip(live: _Live, reason: str) -> None:
    live.result.status, live.result.reason = "skipped", reason
    live.worker.close()


def _start(variants: list[Variant], opts: BenchOptions, progress: Progress) -> tuple[list[VariantResult], list[_Live]]:
    results, alive = [], []
    for v in variants:
        res = _result(v)
        results.append(res)
        if v.skip_reason:
            continue
        progress(f"load {v.id}")
        live = _Live(v, res, Worker(v, opts.seed))
        req = {"cmd": "load", "path": str(v.model.model_file), "format": v.model.format, "backend": v.backend,
               "threads": v.threads, "seed": opts.seed,
               "package": str(v.model.package_root) if v.model.package_root else None}
        stage = "load"
        try:
            reply = live.worker.call(req, opts.call_timeout_s)
            res.load_ms = reply["load_ms"]
            if reply.get("precision") and res.precision == "unknown":
                res.precision = reply["precision"]
            progress(f"warm-up {v.id}")
            stage = "run (warm-up)"
            res.first_inference_ms = live.worker.call({"cmd": "warmup", "n": opts.warmup}, opts.call_timeout_s)[
                "first_ms"]
            alive.append(live)
        except WorkerFailed as exc:
            _skip(live, f"failed to {stage}: {exc}")
    return results, alive


def _timed_rounds(alive: list[_Live], opts: BenchOptions, progress: Progress) -> list[str]:
    """The interleaved rounds; returns the schedule (variant ids in run order)."""
    shares: list[int | None] = (
        list(split_runs(opts.runs, opts.rounds)) if opts.runs else [None] * opts.rounds
    )
    seconds = opts.min_time_s / len(shares) if opts.min_time_s else None
    schedule: list[str] = []
    for r, share in enumerate(shares):
        for live in alive:
            if live.result.status != "ok":
                continue
            progress(f"round {r + 1}/{len(shares)} {live.variant.id}")
            schedule.append(live.variant.id)
            try:
                reply = live.worker.call({"cmd": "run", "n": share, "seconds": seconds}, opts.call_timeout_s)
            except WorkerFailed as exc:
                _skip(live, f"failed during round {r + 1}: {exc}")
                continue
            live.rounds.append(reply["times_ms"])
    return schedule


def _validate(alive: list[_Live], opts: BenchOptions, baseline: str | None, progress: Progress) -> None:
    data = opts.validation
    if data is None:
        return
    outputs: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-val-") as tmp:
        x_path = Path(tmp) / "x.npy"
        np.save(x_path, data.x)
        for live in alive:
            if live.result.status != "ok":
                continue
            progress(f"validate {live.variant.id}")
            out = Path(tmp) / f"out{len(outputs)}-{len(notes)}.npy"
            try:
                live.worker.call({"cmd": "validate", "data": str(x_path), "out": str(out)}, opts.call_timeout_s)
                outputs[live.variant.id] = np.load(out)
            except WorkerFailed as exc:
                notes[live.variant.id] = f"validation failed: {exc}"
    for live in alive:
        vid = live.variant.id
        if live.result.status == "ok" and (vid in outputs or vid in notes):
            live.result.accuracy = score_outputs(outputs.get(vid), data, outputs.get(baseline or ""), baseline,
                                                 notes.get(vid))


def _finish(live: _Live, samples: dict[str, list[float]]) -> None:
    res = live.result
    if res.status == "ok":
        try:
            res.peak_rss_bytes = live.worker.call({"cmd": "finish"}, 30.0)["peak_rss_bytes"]
        except WorkerFailed:
            pass
        flat = [t for rnd in live.rounds for t in rnd]
        res.latency = summarize(flat)
        res.throughput_ips = 1e3 / res.latency.mean_ms
        res.round_p50_ms = round_medians(live.rounds)
        samples[res.id] = flat
    live.worker.close()


def pick_baseline(results: list[VariantResult], wanted: str | None) -> str | None:
    """The baseline variant id: an exact id, else the first ok variant whose id starts with `wanted`."""
    ok = [r for r in results if r.status == "ok"]
    if wanted:
        match = next((r for r in ok if r.id == wanted), None) or next((r for r in ok if r.id.startswith(wanted)), None)
        if match is None:
            raise BenchmarkError(f"--baseline {wanted!r} matches no measured variant ({', '.join(r.id for r in ok)})")
        return match.id
    return ok[0].id if ok else None


def _ratios_and_warnings(report: BenchReport, baseline: str | None, threshold: float) -> None:
    base = report.variant(baseline) if baseline else None
    noisy, shaky = [], []
    for v in report.variants:
        if v.status == "ok" and v.latency and v.latency.rel_spread > threshold:
            noisy.append((v.latency.rel_spread, v.id))
        if base is None or v.status != "ok" or v.id == base.id:
            continue
        size = v.file_size_bytes / base.file_size_bytes if v.file_size_bytes and base.file_size_bytes else None
        ratio = paired_speedup(v.id, base.id, v.round_p50_ms, base.round_p50_ms, size)
        report.ratios.append(ratio)
        if ratio_rel_spread(ratio) > threshold:
            shaky.append((ratio_rel_spread(ratio), v.id))
    if noisy:
        worst = max(noisy)
        report.warnings.append(
            f"{len(noisy)} variant(s) have a latency spread (IQR/p50) above {threshold:.0%}, worst {worst[1]} "
            f"{worst[0]:.0%}: the machine is too noisy for this comparison (close other programs, pin the "
            "governor, add --runs)")
    if shaky:
        worst = max(shaky)
        report.warnings.append(
            f"{len(shaky)} speedup ratio(s) vary more than {threshold:.0%} between rounds, worst {worst[1]} "
            f"{worst[0]:.0%}: treat those ratios with care")


def run_bench(variants: list[Variant], opts: BenchOptions, progress: Progress | None = None) -> BenchRun:
    """Measure every runnable variant; skipped ones are reported with their reason."""
    progress = progress or (lambda _msg: None)
    machine = describe_machine()
    warnings = []
    if machine.load_average and machine.load_average[0] > 0.5 * (machine.usable_cores or machine.logical_cores):
        warnings.append(f"the machine is busy (1-minute load {machine.load_average[0]:.1f} on "
                        f"{machine.usable_cores or machine.logical_cores} cores): absolute times will be noisy")
    results, alive = _start(variants, opts, progress)
    samples: dict[str, list[float]] = {}
    try:
        schedule = _timed_rounds(alive, opts, progress)
        baseline = pick_baseline([lv.result for lv in alive], opts.baseline)
        _validate(alive, opts, baseline, progress)
        for live in alive:
            _finish(live, samples)
    finally:
        for live in alive:
            live.worker.close()
    settings = BenchSettings(
        warmup=opts.warmup, runs=opts.runs, min_time_s=opts.min_time_s, rounds=opts.rounds, seed=opts.seed,
        validation=opts.validation.source if opts.validation else None, noise_threshold=opts.noise_threshold,
    )
    report = BenchReport(
        created=datetime.now(UTC).isoformat(timespec="seconds"), reference_name=opts.reference_name,
        machine=machine, settings=settings, variants=results, schedule=schedule, warnings=warnings,
    )
    _ratios_and_warnings(report, pick_baseline(results, opts.baseline), opts.noise_threshold)
    return BenchRun(report, samples)
