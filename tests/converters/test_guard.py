"""The accuracy guard: measured on held-back data, remedies tried in order, a clear failure when they run out."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from converters import guard
from converters.pipeline import ConvertOptions, convert
from edge_runtime.cli import main


@pytest.fixture(scope="module")
def outlier_data(tmp_path_factory, digits):
    """Calibration data with two stray values of 1000 (a sensor glitch): minmax ranges blow up on them."""
    root = tmp_path_factory.mktemp("outliers")
    calib = digits.x[1200:1300].copy()
    calib[7, 10] = calib[7, 20] = 1000.0
    np.save(root / "calib.npy", calib)
    np.save(root / "valid.npy", digits.x[1400:1500])
    return root


def test_measure_counts_agreement_cosine_and_error():
    pairs = [
        ([np.array([[0.1, 0.9]], np.float32)], [np.array([[0.1, 0.9]], np.float32)]),
        ([np.array([[0.8, 0.2]], np.float32)], [np.array([[0.2, 0.8]], np.float32)]),
    ]
    ag = guard.measure(iter(pairs), class_output=0)
    assert ag.samples == 2 and ag.top1 == 0.5
    # two values per sample: too few for a cosine each, so it is taken over the whole set
    expected_cos = (0.01 + 0.81 + 0.16 + 0.16) / (0.01 + 0.81 + 0.64 + 0.04)
    assert ag.cosine == pytest.approx(expected_cos) and ag.max_abs == pytest.approx(0.6)
    big = [([np.arange(1, 17, dtype=np.float32)[None]], [np.arange(1, 17, dtype=np.float32)[None]])]
    assert guard.measure(iter(big), None).cosine == pytest.approx(1.0)
    assert guard.passes(ag, {"min_top1_agreement": 0.5}) and not guard.passes(ag, {"min_cosine": 0.9})


def test_remedies_recorded_when_calibration_methods_are_not_enough(outlier_data, sklearn_models, tmp_path):
    """Given glitched calibration data, when converting, then all three methods miss, the guard keeps the
    error-sensitive nodes in float, meets the budget, and the manifest says exactly that."""
    opts = ConvertOptions(
        source=sklearn_models["mlp.pkl"], profile="x86-laptop", calibration=outlier_data / "calib.npy",
        validation=outlier_data / "valid.npy", out=tmp_path / "pkg",
    )  # fmt: skip
    lines: list[str] = []
    m = convert(opts, progress=lines.append).manifest
    rem = m.quantization.remedies
    assert [r.split(" missed")[0] for r in rem[:3]] == [
        f"calibration method {x}" for x in ("minmax", "entropy", "percentile")
    ]
    assert rem[-1].startswith("kept ") and "in float" in rem[-1]
    assert m.accuracy.passed and m.accuracy.top1_agreement >= 0.98
    assert any("MatMul" in n for n in m.quantization.float_nodes)
    assert any(line.startswith("per-node error analysis") for line in lines)
    model = onnx.load(str(tmp_path / "pkg" / "model.onnx"))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    kept = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    assert kept and all(producer.get(n.input[0]) != "DequantizeLinear" for n in kept)


def test_budget_miss_fails_clearly_and_writes_nothing(outlier_data, sklearn_models, tmp_path, capsys):
    out = tmp_path / "pkg"
    rc = main(["convert", str(sklearn_models["mlp.pkl"]), "--profile", "x86-laptop", "--calibration",
               str(outlier_data / "calib.npy"), "--validation", str(outlier_data / "valid.npy"), "--out", str(out),
               "--max-float-nodes", "0", "-q"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and not out.exists()
    assert "misses the accuracy budget (min_top1_agreement 0.98, min_cosine 0.98)" in err[0]
    assert "minmax, entropy, percentile" in err[0]
    # the refusal teaches: it names the data and the flags that would change the outcome
    assert "labelled --validation data" in err[0] and "--max-float-nodes above 0" in err[0]
