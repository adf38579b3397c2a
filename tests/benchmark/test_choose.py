"""`bench --choose`: the selection rule on measured results, and the whole command on a real PyTorch CNN.

Given candidates measured by the bench runner, the chosen one is the fastest whose labelled accuracy is within
the profile's budget of the unpruned float model; the package written carries the table that justified it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge_runtime.benchmark import BenchmarkError
from edge_runtime.benchmark.choose import Candidate, format_selection, select
from edge_runtime.benchmark.schema import (
    AccuracyResult,
    BenchReport,
    BenchSettings,
    LatencyStats,
    MachineInfo,
    VariantResult,
)
from tests.converters.prune_data import INPUT_SHAPE, needs_prune, small_cnn


def _variant(vid: str, p50: float | None, acc: float | None) -> VariantResult:
    lat = None if p50 is None else LatencyStats(count=10, mean_ms=p50, std_ms=0, min_ms=p50, p50_ms=p50, p90_ms=p50,
                                                p99_ms=p50, max_ms=p50, iqr_ms=0, mad_ms=0, rel_spread=0)  # fmt: skip
    return VariantResult(id=vid, model=vid, path=vid, format="onnx", precision="int8", backend="onnxruntime",
                         threads=1, status="ok" if lat else "skipped", reason=None if lat else "crashed",
                         latency=lat,
                         accuracy=AccuracyResult(samples=100, top1_accuracy=acc) if acc else None)  # fmt: skip


def _report(variants: list[VariantResult]) -> BenchReport:
    machine = MachineInfo(cpu_model="cpu", arch="x86_64", logical_cores=2, system="linux", python="3.11")
    return BenchReport(created="now", machine=machine, settings=BenchSettings(warmup=1, rounds=1, seed=0,
                       noise_threshold=0.1), variants=variants)  # fmt: skip


CANDS = [Candidate("onnx/float/p0", "onnx", "float32", 0.0, "a"), Candidate("onnx/int8/p0", "onnx", "int8", 0.0, "b"),
         Candidate("onnx/int8/p0.3", "onnx", "int8", 0.3, "c"), Candidate("onnx/int8/p0.5", "onnx", "int8", 0.5, "d"),
         Candidate("tflite/int8/p0", "tflite", "int8", 0.0, None, "cannot be made")]  # fmt: skip
OF = {"a": ("onnx/float/p0", 1), "b": ("onnx/int8/p0", 1), "c": ("onnx/int8/p0.3", 1), "d": ("onnx/int8/p0.5", 1)}


def test_fastest_within_budget_wins_and_faster_but_worse_is_excluded():
    report = _report([_variant("a", 4.0, 0.950), _variant("b", 2.0, 0.945), _variant("c", 1.5, 0.941),
                      _variant("d", 1.0, 0.930)])  # fmt: skip
    info, chosen = select(report, CANDS, OF, 0.01, "here")
    assert chosen.key == "onnx/int8/p0.3" and info.chosen == "onnx/int8/p0.3/t1"
    assert info.reference_accuracy == 0.950  # the unpruned float model's
    rows = {r.candidate: r for r in info.rows}
    assert not rows["onnx/int8/p0.5/t1"].within_budget and "below 0.9400" in rows["onnx/int8/p0.5/t1"].note
    assert rows["tflite/int8/p0/t1"].note == "cannot be made" and not rows["tflite/int8/p0/t1"].within_budget
    table = format_selection(info)
    assert "CHOSEN" in table.splitlines()[4] and table.splitlines()[3].startswith("onnx/int8/p0.5/t1")


def test_skipped_variants_and_missing_labels_are_never_chosen():
    report = _report([_variant("a", 4.0, 0.95), _variant("b", None, None), _variant("c", 0.5, None)])
    info, chosen = select(report, CANDS, OF, 0.01, "here")
    assert chosen.key == "onnx/float/p0"
    assert {r.candidate: r.note for r in info.rows}["onnx/int8/p0.3/t1"] == "no labelled accuracy"


def test_nothing_within_budget_is_an_error():
    with pytest.raises(BenchmarkError, match="no candidate is within the accuracy budget"):
        select(_report([_variant("a", 4.0, None)]), CANDS, OF, 0.01, "here")


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", "bench", *args], capture_output=True, text=True,
                          timeout=900)  # fmt: skip


@needs_prune
@pytest.mark.slow
def test_choose_writes_the_fastest_package_that_keeps_accuracy(tmp_path):
    from edge_runtime.package import generate_keypair

    cnn = small_cnn()
    key, pub = generate_keypair(tmp_path / "release")
    out = tmp_path / "chosen"
    res = _bench("--choose", str(cnn.model), "--sign-key", str(key), "--profile", "x86-laptop",
                 "--validation", str(cnn.valid),
                 "--calibration", str(cnn.train), "--input-shape", INPUT_SHAPE, "--prune-ratios", "0.5",
                 "--fine-tune-epochs", "1", "--max-samples", "48", "--threads", "1", "--runs", "30", "--rounds", "3",
                 "--warmup", "3",
                 "--out", str(out), "--no-progress")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    sel = m["selection"]
    rows = {r["candidate"]: r for r in sel["rows"]}
    assert set(rows) >= {"onnx/float/p0/t1", "onnx/int8/p0/t1", "onnx/float/p0.5/t1", "onnx/int8/p0.5/t1"}
    kept = [r for r in sel["rows"] if r["within_budget"]]
    assert sel["chosen"] == min(kept, key=lambda r: r["p50_ms"])["candidate"]
    assert sel["reference_accuracy"] == rows["onnx/float/p0/t1"]["top1_accuracy"]
    assert all(r["top1_accuracy"] >= sel["reference_accuracy"] - sel["max_accuracy_drop"] - 1e-9 for r in kept)
    assert "torch source cannot be converted to TFLite" in rows["tflite/int8/p0/t1"]["note"]
    chosen = rows[sel["chosen"]]
    assert m["name"] == "cnn" and m["quantization"]["precision"] == chosen["precision"]
    assert (m["pruning"] is not None) == (chosen["prune_ratio"] > 0)
    html = (tmp_path / "chosen.report" / "report.html").read_text()
    assert "CHOSEN" in html and sel["chosen"] in html
    assert f"{sel['chosen']}" in res.stdout and "CHOSEN" in res.stdout
    verify = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "verify", str(out), "--key", str(pub)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert verify.returncode == 0, verify.stderr


@needs_prune
def test_choose_refuses_pruning_a_non_torch_source(tmp_path):
    from tests.benchmark.conftest import build_mlp

    model = build_mlp(tmp_path / "mlp.onnx")
    res = _bench("--choose", str(model), "--profile", "x86-laptop", "--validation", str(model), "--out",
                 str(tmp_path / "o"), "--prune-ratios", "0.3")  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "pruning needs a PyTorch source" in res.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("flags", "says"), [
    (["--choose", "m.pt", "--profile", "x86-laptop"], "bench --choose needs --validation, --out"),
    (["m.onnx", "--out", "x"], "--out applies with --choose only"),
])  # fmt: skip
def test_choose_flag_mistakes(flags, says):
    res = _bench(*flags)
    assert res.returncode == 2 and says in res.stderr and "Traceback" not in res.stderr
