"""Build the standard suite's models once into a cache (run in a subprocess: it imports TensorFlow).

    python benchmarks/suite_models.py CACHE_DIR

writes CACHE_DIR/packages/<name>/ model packages: mobilenet_v2_{float,int8}_{tflite,onnx} (Keras MobileNetV2-224,
seeded random weights; TFLiteConverter float and full-int8; tf2onnx + onnxruntime quantize_static QDQ per-channel),
sensor_{float,int8} (a 1-D conv net over 6x128 IMU windows, built with onnx.helper), and demo_blazeface
(converters.zoo.blazeface.build_demo_package when it exists, else the float BlazeFace model packaged as is).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
MOBILENETS = [f"mobilenet_v2_{p}_{f}" for f in ("tflite", "onnx") for p in ("float", "int8")]
SENSORS = ["sensor_float", "sensor_int8"]
DEMO = "demo_blazeface"


def photos(size: int, count: int = 16) -> np.ndarray:
    """Real photos from scikit-image (and flips), RGB, resized to size x size, normalised to [-1, 1]."""
    import cv2
    from skimage import data

    imgs = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat", "logo"):
        try:
            img = getattr(data, name)()
        except (AttributeError, OSError, ValueError):  # an image this scikit-image version lacks
            continue
        img = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        imgs += [img, img[:, ::-1]]
    out = [cv2.resize(np.ascontiguousarray(i), (size, size), interpolation=cv2.INTER_AREA) for i in imgs[:count]]
    return ((np.stack(out).astype(np.float32) - 127.5) / 127.5).astype(np.float32)


def _tensor_fields(t: dict[str, Any]) -> dict[str, Any]:
    f: dict[str, Any] = {"name": t["name"], "shape": tuple(int(d) for d in t["shape"]), "dtype": t["dtype"]}
    if t.get("scale"):
        f["quantization"] = {"scale": (t["scale"],), "zero_point": (t["zero_point"],)}
    return f


def describe_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of a model file as TensorSpec fields, read by the backend that runs it."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path))

        def conv(d: dict[str, Any]) -> dict[str, Any]:
            scale, zp = d["quantization"]
            return _tensor_fields({"name": d["name"], "shape": d["shape"], "dtype": np.dtype(d["dtype"]).name,
                                   "scale": float(scale), "zero_point": int(zp)})

        return [conv(d) for d in it.get_input_details()], [conv(d) for d in it.get_output_details()]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    types = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}

    def conv_o(a: Any) -> dict[str, Any]:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in a.shape]
        return _tensor_fields({"name": a.name, "shape": shape, "dtype": types[a.type]})

    return [conv_o(a) for a in sess.get_inputs()], [conv_o(a) for a in sess.get_outputs()]


def package(model: Path, out: Path, precision: str, image: bool, method: str) -> None:
    """Wrap a model file as a package: image input (RGB, [-1,1]) or tensor input; raw outputs."""
    from edge_runtime.package.store import write_package

    ins, outs = describe_io(model)
    extra = {"kind": "image", "layout": "NHWC", "color_order": "RGB",
             "normalization": {"mean": (127.5,), "std": (127.5,)}} if image else {"kind": "tensor"}
    fields = {
        "name": out.name.replace("_", "-"), "version": "1.0.0", "created": datetime.now(UTC).isoformat(),
        "format": model.suffix.lstrip("."), "profile": "x86-laptop", "model_file": f"model{model.suffix}",
        "inputs": [{**i, **extra} for i in ins], "outputs": {"task": "raw", "tensors": outs},
        "quantization": {"precision": precision, "method": method},
    }
    write_package(out, {f"model{model.suffix}": model}, fields, overwrite=True)


def _calib(x: np.ndarray, name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it: Iterator[np.ndarray] = iter(x)

        def get_next(self) -> dict[str, np.ndarray] | None:
            s = next(self.it, None)
            return None if s is None else {name: s[None].astype(np.float32)}

    return Reader()


def quantize_onnx(src: Path, dst: Path, x: np.ndarray) -> None:
    """ONNX -> int8 QDQ, per-channel weights, u8 activations (the variant FINDINGS measured fastest)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
    quantize_static(str(pre), str(dst), _calib(x, name), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    pre.unlink()


def build_mobilenets(cache: Path) -> None:
    import tensorflow as tf

    try:
        from converters.zoo.mobilenet import build_mobilenet_v2

        model = build_mobilenet_v2(0)
    except ImportError:
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)
    x = photos(224)
    files = cache / "files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "mobilenet_v2_float.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([s[None]] for s in x)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    (files / "mobilenet_v2_int8.tflite").write_bytes(conv.convert())
    with tempfile.TemporaryDirectory() as tmp:
        model.export(f"{tmp}/sm", verbose=False)
        subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", f"{tmp}/sm", "--opset", "17",
                        "--output", str(files / "mobilenet_v2_float.onnx")], check=True, capture_output=True)
    quantize_onnx(files / "mobilenet_v2_float.onnx", files / "mobilenet_v2_int8.onnx", x)
    for name in MOBILENETS:
        prec, fmt = name.split("_")[2], name.split("_")[3]
        method = {"float": "none", "int8": "tflite-ptq-full-int8" if fmt == "tflite" else "ort-static-qdq"}[prec]
        package(files / f"mobilenet_v2_{prec}.{fmt}", cache / "packages" / name, "float32" if prec == "float"
                else "int8", True, method)


def build_sensor(cache: Path) -> None:
    """Conv1d(6->16,k5) Relu Conv1d(16->32,k5,s2) Relu GAP Gemm(32->5): a small activity classifier shape."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {"w1": rng.normal(0, 0.3, (16, 6, 5)), "b1": rng.normal(0, 0.1, 16), "w2": rng.normal(0, 0.2, (32, 16, 5)),
         "b2": rng.normal(0, 0.1, 32), "fc": rng.normal(0, 0.3, (32, 5)), "fb": rng.normal(0, 0.1, 5)}
    nodes = [
        helper.make_node("Conv", ["window", "w1", "b1"], ["c1"], pads=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[2, 2], strides=[2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "sensor", [helper.make_tensor_value_info("window", TensorProto.FLOAT, [1, 6, 128])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    files = cache / "files"
    files.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(files / "sensor_float.onnx"))
    t = np.linspace(0, 8 * np.pi, 128, dtype=np.float32)
    x = np.stack([np.stack([np.sin(t * (1 + k % 3) + i) for k in range(6)]) for i in range(32)]).astype(np.float32)
    quantize_onnx(files / "sensor_float.onnx", files / "sensor_int8.onnx", x + rng.normal(0, 0.1, x.shape))
    package(files / "sensor_float.onnx", cache / "packages" / "sensor_float", "float32", False, "none")
    package(files / "sensor_int8.onnx", cache / "packages" / "sensor_int8", "int8", False, "ort-static-qdq")


def build_demo(cache: Path) -> str:
    """The demo package; returns how it was made."""
    from converters.zoo import blazeface as bf

    out = cache / "packages" / DEMO
    if hasattr(bf, "build_demo_package"):
        bf.build_demo_package(out, profile="x86-laptop")
        return "converters.zoo.blazeface.build_demo_package"
    from edge_runtime.package.store import write_package

    fields = {"name": "demo-blazeface", "version": "1.0.0", "created": datetime.now(UTC).isoformat(),
              "format": "tflite", "profile": "x86-laptop", "model_file": "model.tflite",
              "inputs": [bf.input_spec().model_dump()], "outputs": bf.output_spec().model_dump(),
              "quantization": {"precision": "float32", "method": "none"}}
    write_package(out, {"model.tflite": bf.model_path(), bf.ANCHORS_FILE: bf.anchors_npy()}, fields, overwrite=True)
    return "float BlazeFace packaged as is (build_demo_package not available)"


def main(cache: Path) -> int:
    pk = cache / "packages"
    if not all((pk / n / "manifest.json").is_file() for n in MOBILENETS):
        build_mobilenets(cache)
    if not all((pk / n / "manifest.json").is_file() for n in SENSORS):
        build_sensor(cache)
    if not (pk / DEMO / "manifest.json").is_file():
        print(f"demo: {build_demo(cache)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
