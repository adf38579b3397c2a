"""Backends on real model files: registry, LiteRT and onnxruntime runs, provider fallback, bad files."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.api import backend_options, load
from edge_runtime.backends import BackendOptions, backend_for_format, backend_status, open_backend
from edge_runtime.backends.litert import numpy_abi_problem
from edge_runtime.backends.onnxruntime import choose_providers
from edge_runtime.errors import BackendError, InputError
from edge_runtime.profiles import load_profile
from tests.model_factory import classifier_package, factory_trust, onnx_classifier_model, tflite_int8_classifier_model


def test_registry_lists_both_backends_as_usable_here() -> None:
    status = backend_status()
    assert status == {"tflite": None, "onnxruntime": None}
    assert backend_for_format("onnx") == "onnxruntime"
    assert backend_for_format("tflite") == "tflite"


def test_unknown_backend_and_wrong_format_are_backend_errors(tmp_path: Path) -> None:
    model = onnx_classifier_model(tmp_path / "m.onnx")
    with pytest.raises(BackendError, match="unknown backend"):
        open_backend("tensorrt", str(model), BackendOptions())
    with pytest.raises(BackendError, match="cannot run 'onnx'"):
        open_backend("tflite", str(model), BackendOptions(), fmt="onnx")


def test_onnxruntime_runs_a_real_model_like_a_plain_session(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = onnx_classifier_model(tmp_path / "m.onnx", hw=(24, 24), classes=4, seed=3)
    backend = open_backend("onnxruntime", str(model), BackendOptions(threads=1))
    assert [i.name for i in backend.inputs] == ["input"]
    assert backend.inputs[0].shape == (1, 24, 24, 3) and backend.inputs[0].dtype == np.float32
    x = np.random.default_rng(0).normal(size=(1, 24, 24, 3)).astype(np.float32)
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = backend.run([x])
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    assert got[0].shape == (1, 4)
    backend.close()


def test_litert_runs_int8_model_with_and_without_xnnpack(tmp_path: Path) -> None:
    model = tflite_int8_classifier_model(tmp_path / "m.tflite")
    x = np.random.default_rng(1).integers(-128, 128, (1, 32, 32, 3)).astype(np.int8)
    outs = []
    for xnnpack in (True, False):
        backend = open_backend("tflite", str(model), BackendOptions(threads=2, xnnpack=xnnpack))
        assert backend.inputs[0].dtype == np.int8 and backend.outputs[0].dtype == np.int8
        outs.append(backend.run([x])[0])
        backend.close()
    assert outs[0].shape == (1, 3)
    # XNNPACK and the reference kernels may differ by a rounding step on int8 outputs, not more.
    assert np.max(np.abs(outs[0].astype(int) - outs[1].astype(int))) <= 1


def test_wrong_dtype_or_shape_is_an_input_error(tmp_path: Path) -> None:
    onnx_b = open_backend("onnxruntime", str(onnx_classifier_model(tmp_path / "m.onnx")), BackendOptions())
    with pytest.raises(InputError):
        onnx_b.run([np.zeros((1, 32, 32, 3), np.int32)])
    tfl_b = open_backend("tflite", str(tflite_int8_classifier_model(tmp_path / "m.tflite")), BackendOptions())
    with pytest.raises(InputError):
        tfl_b.run([np.zeros((1, 32, 32, 3), np.float32)])
    with pytest.raises(InputError):
        tfl_b.run([])


@pytest.mark.parametrize(("name", "suffix"), [("onnxruntime", ".onnx"), ("tflite", ".tflite")])
def test_corrupt_model_file_is_a_backend_error(tmp_path: Path, name: str, suffix: str) -> None:
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(b"definitely not a model" * 10)
    with pytest.raises(BackendError, match="cannot load"):
        open_backend(name, str(bad), BackendOptions())


def test_unavailable_providers_fall_back_to_cpu_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given the jetson-nano profile (TensorRT, CUDA, CPU) on this CPU-only machine, the model still runs."""
    pkg = classifier_package(tmp_path / "pkg", profile="jetson-nano")
    with caplog.at_level(logging.WARNING, logger="edge_runtime.backends.onnxruntime"):
        model = load(pkg, trust=factory_trust())
    text = caplog.text
    assert "TensorrtExecutionProvider" in text and "CUDAExecutionProvider" in text and "falling back" in text
    assert model.profile is not None and model.profile.name == "jetson-nano"
    assert model._backend.providers[0] == "CPUExecutionProvider"  # type: ignore[attr-defined]
    frame = np.full((40, 40, 3), 90, np.uint8)
    assert model.predict(frame).top is not None
    model.close()


def test_choose_providers_keeps_order_and_last_resort() -> None:
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
    assert choose_providers(["B", "A"], ["A", "B", "C"]) == ["B", "A"]
    assert choose_providers(["TensorrtExecutionProvider"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_profile_threads_and_settings_reach_backend_options() -> None:
    pi = load_profile("raspberry-pi-4")
    opts = backend_options(pi, "tflite", None)
    assert opts.threads == pi.backends.tflite.threads and opts.xnnpack is True
    jetson = load_profile("jetson-nano")
    ort_opts = backend_options(jetson, "onnxruntime", 1)
    assert ort_opts.threads == 1
    assert ort_opts.execution_providers[0] == "TensorrtExecutionProvider"


def test_tflite_runtime_under_numpy2_is_reported_in_one_line() -> None:
    msg = numpy_abi_problem("2.14.0", "2.4.6")
    assert msg is not None and "\n" not in msg
    assert "tflite-runtime 2.14.0" in msg and "NumPy 2.4.6" in msg and "ai-edge-litert" in msg
    assert numpy_abi_problem("2.14.0", "1.26.4") is None
    assert numpy_abi_problem(None, "2.4.6") is None


def test_importing_the_runtime_api_loads_no_heavy_framework() -> None:
    code = (
        "import sys, edge_runtime.api, edge_runtime.golden, edge_runtime.postprocess;"
        "bad=[m for m in ('tensorflow','torch','keras','onnxruntime','ai_edge_litert') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
