"""Golden smoke test on real packages: passes when outputs match, fails with reasons when they do not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.api import load
from edge_runtime.golden import smoke_test, smoke_test_package
from edge_runtime.package.store import Package
from tests.model_factory import classifier_package, factory_trust, stateful_package


@pytest.mark.parametrize("fixture", ["tiny_onnx_package", "tiny_tflite_package", "sensor_package"])
def test_good_package_passes(fixture: str, request: pytest.FixtureRequest) -> None:
    pkg: Package = request.getfixturevalue(fixture)
    with load(pkg, trust=factory_trust()) as model:
        report = smoke_test(model, budget_ms=None)
    assert report.passed, report.reasons
    assert report.pairs == pkg.manifest.golden.count  # type: ignore[union-attr]
    assert report.reasons == () and report.top1_mismatches == 0
    assert report.max_abs_error <= pkg.manifest.golden.atol  # type: ignore[union-attr]
    assert report.latency_ms_p50 is not None and report.latency_ms_p95 is not None
    assert report.latency_ms_p95 >= report.latency_ms_p50 > 0


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_package_with_wrong_golden_outputs_fails(tmp_path: Path, fmt: str) -> None:
    pkg = classifier_package(tmp_path / "bad", fmt=fmt, corrupt_golden=True)  # type: ignore[arg-type]
    report = smoke_test_package(pkg.root, trust=factory_trust())
    assert not report.passed
    assert report.max_abs_error > pkg.manifest.golden.atol  # type: ignore[union-attr]
    assert report.top1_mismatches >= 1
    assert any("top-1" in r for r in report.reasons) and any("max abs error" in r for r in report.reasons)


def test_latency_over_budget_fails(tiny_onnx_package: Package) -> None:
    with load(tiny_onnx_package, trust=factory_trust()) as model:
        report = smoke_test(model, budget_ms=1e-6)  # no real inference takes a nanosecond
    assert not report.passed
    assert report.reasons and "exceeds the budget" in report.reasons[-1]


def test_package_level_smoke_test_uses_the_profile_budget_and_reports_load_errors(
    tiny_onnx_package: Package, tmp_path: Path
) -> None:
    report = smoke_test_package(tiny_onnx_package.root, trust=factory_trust())
    assert report.budget_ms == 50.0  # x86-laptop latency_ms_p95
    # the golden pairs pass; whether a loaded CI machine meets 50 ms is for benchmarks, not this test
    assert report.pairs > 0 and [r for r in report.reasons if "exceeds the budget" not in r] == []
    missing = smoke_test_package(tmp_path / "nowhere")
    assert not missing.passed and "cannot load package" in missing.reasons[0]


def test_package_without_golden_set_is_checked_for_running_only(tmp_path: Path) -> None:
    with load(stateful_package(tmp_path / "sum"), trust=factory_trust()) as model:
        report = smoke_test(model)
        assert report.passed and report.pairs == 0
        # the smoke test does not disturb the stream state
        np.testing.assert_allclose(model.predict(np.ones((1, 2), np.float32)).raw["total"], [[1, 1]])
