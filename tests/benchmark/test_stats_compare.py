"""Statistics, machine description and --compare logic on synthetic data (no models)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.benchmark.compare import compare, format_outcome
from edge_runtime.benchmark.machine import describe_machine, machine_slug, parse_cpuinfo
from edge_runtime.benchmark.schema import BenchReport, BenchSettings, RatioResult, VariantResult
from edge_runtime.benchmark.stats import paired_speedup, split_runs, summarize


def test_summary_percentiles_and_spread() -> None:
    s = summarize(list(range(1, 101)))
    assert s.count == 100 and s.p50_ms == pytest.approx(50.5) and s.max_ms == 100 and s.min_ms == 1
    assert s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.iqr_ms == pytest.approx(49.5) and s.mad_ms == pytest.approx(25.0)
    assert s.rel_spread == pytest.approx(49.5 / 50.5)


def test_paired_speedup_cancels_a_drift_shared_by_both_variants() -> None:
    # Given a machine that slows down 3x over the run, affecting both variants in each round alike,
    drift = np.linspace(1.0, 3.0, 10)
    r = paired_speedup("b", "a", list(1.0 * drift), list(2.0 * drift), size_ratio=0.25)
    # then the paired ratio is exactly 2 with no spread, while all-A-then-all-B would mix the drift in.
    assert r.speedup == pytest.approx(2.0) and r.speedup_q1 == pytest.approx(2.0) == r.speedup_q3
    assert r.size_ratio == 0.25


def test_split_runs() -> None:
    assert split_runs(10, 3) == [4, 3, 3]
    assert split_runs(2, 5) == [1, 1]
    assert sum(split_runs(301, 10)) == 301


def test_cpuinfo_parsing_x86_and_arm() -> None:
    x86 = "processor: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse4_2 avx2 avx512_vnni xyz\n"
    assert parse_cpuinfo(x86) == ("Some CPU", ["sse4_2", "avx2", "avx512_vnni"])
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 asimddp i8mm\nCPU part\t: 0xd0b\n"
    model, feats = parse_cpuinfo(arm)
    assert model == "" and feats == ["asimd", "asimddp", "i8mm"]


def test_this_machine_is_described() -> None:
    m = describe_machine()
    assert m.logical_cores >= 1 and m.arch and m.python and "numpy" in m.libraries
    assert machine_slug(m).startswith(m.arch)


def _report(cpu: str, p50: float, speedup: float, size: int = 1000) -> BenchReport:
    from edge_runtime.benchmark.stats import summarize as summ

    m = describe_machine().model_copy(update={"cpu_model": cpu})
    v = VariantResult(id="m.onnx/onnxruntime/t1", model="m.onnx", path="m.onnx", format="onnx", precision="int8",
                      backend="onnxruntime", threads=1, status="ok", latency=summ([p50] * 5), file_size_bytes=size)
    return BenchReport(
        created="2026-01-01T00:00:00+00:00", machine=m,
        settings=BenchSettings(warmup=1, runs=5, rounds=1, seed=0, noise_threshold=0.1), variants=[v],
        ratios=[RatioResult(variant=v.id, baseline="f", speedup=speedup, speedup_q1=speedup, speedup_q3=speedup)],
        figures={"mobilenet_int8_tflite_speedup": speedup, "runtime_overhead_tflite_p50": 0.02},
    )


@pytest.mark.parametrize(
    "p50, speedup, regressions",
    [(10.0, 2.0, set()), (11.0, 1.8, set()), (13.0, 2.0, {"p50_ms"}), (10.0, 1.5, {"speedup"})],
)
def test_compare_flags_only_changes_beyond_tolerance(p50: float, speedup: float, regressions: set[str]) -> None:
    ref = _report("CPU A", 10.0, 2.0)
    out = compare(_report("CPU A", p50, speedup), ref, tolerance=0.15)
    flagged = {r.metric for r in out.regressions}
    if "speedup" in regressions:  # the named figure moves with the ratio
        regressions = regressions | {"mobilenet_int8_tflite_speedup"}
    assert flagged == regressions
    assert ("no regression" in format_outcome(out, "ref", 0.15)) == (not regressions)


def test_compare_on_another_cpu_judges_ratios_not_absolute_times() -> None:
    out = compare(_report("CPU B", 30.0, 2.0), _report("CPU A", 10.0, 2.0), tolerance=0.15)
    p50 = next(r for r in out.rows if r.metric == "p50_ms")
    assert p50.status == "info" and not out.regressions and "differs" in out.notes[0]
    out = compare(_report("CPU B", 30.0, 1.0), _report("CPU A", 10.0, 2.0), tolerance=0.15)
    assert {r.metric for r in out.regressions} == {"speedup", "mobilenet_int8_tflite_speedup"}


def test_a_larger_file_is_a_regression() -> None:
    out = compare(_report("CPU A", 10.0, 2.0, size=1500), _report("CPU A", 10.0, 2.0, size=1000), 0.15)
    assert {r.metric for r in out.regressions} == {"file_size_bytes"}
