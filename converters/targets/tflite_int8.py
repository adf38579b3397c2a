"""Full-integer int8 TFLite target.

Keras models and SavedModels go through ``TFLiteConverter`` with a representative dataset; a float TFLite
flatbuffer (no Keras graph at hand) goes through TensorFlow's own post-training calibrator, the one
TFLiteConverter uses internally (``tensorflow.lite.python.optimize.calibrator``: an internal module, pinned by
the TensorFlow version in the ``convert`` extra and covered by tests). The written file is then checked: the
I/O types the profile asked for, and which operators still compute in float (reported, not hidden).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.model import FloatModel, QuantizedModel, TensorInfo
from converters.sources import tflite_graph
from converters.sources.keras import import_tensorflow
from converters.sources.tflite import tool_versions
from edge_runtime.errors import CalibrationError, ConversionError, MissingDependencyError, first_line
from edge_runtime.fsutil import atomic_write_bytes
from edge_runtime.package.manifest import Quantization
from edge_runtime.profiles import DeviceProfile

log = logging.getLogger(__name__)

Calibration = Callable[[], Iterator[list[np.ndarray]]]
SUPPORTED_METHODS = ("minmax",)
# Ops that only convert between float and integer at the model boundary.
_BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")


@dataclass
class _CheckedCalibration:
    """Wraps the calibration callable: checks every sample against the model inputs and counts them.

    TensorFlow swallows exceptions raised inside a representative dataset into its own errors, so a bad sample
    stops the iteration and is re-raised by :meth:`raise_if_failed` after the conversion.
    """

    calibration: Calibration
    inputs: tuple[TensorInfo, ...]
    samples: int = 0
    error: CalibrationError | None = field(default=None)

    def _check(self, sample: Any) -> list[np.ndarray]:
        if not isinstance(sample, (list, tuple)) or len(sample) != len(self.inputs):
            raise CalibrationError(f"calibration sample must be a list of {len(self.inputs)} array(s)")
        out = []
        for arr, info in zip(sample, self.inputs, strict=True):
            arr = np.asarray(arr)
            want = tuple(1 if d < 0 else d for d in info.shape)
            if arr.shape != want:
                raise CalibrationError(
                    f"calibration data for {info.name!r} has shape {list(arr.shape)}, the model takes {list(want)}"
                )
            if arr.dtype.kind != "f":
                raise CalibrationError(f"calibration data for {info.name!r} is {arr.dtype}, expected float32")
            out.append(arr.astype(np.float32, copy=False))
        return out

    def __call__(self) -> Iterator[list[np.ndarray]]:
        self.samples = 0
        for sample in self.calibration():
            try:
                checked = self._check(sample)
            except CalibrationError as exc:
                self.error = exc
                return
            self.samples += 1
            yield checked

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error
        if self.samples == 0:
            raise CalibrationError("calibration data is empty")


def _tf_dtype(tf: Any, name: str) -> Any:
    return {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[name]


def _from_tf(fm: FloatModel, data: _CheckedCalibration, profile: DeviceProfile) -> bytes:
    """Keras model or SavedModel -> int8 flatbuffer via TFLiteConverter."""
    tf = import_tensorflow()
    if fm.keras_model is not None:
        converter = tf.lite.TFLiteConverter.from_keras_model(fm.keras_model)
    else:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(fm.saved_model_dir))
    q = profile.quantization
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = data
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = _tf_dtype(tf, q.input_dtype)
    converter.inference_output_type = _tf_dtype(tf, q.output_dtype)
    converter._experimental_disable_per_channel = not q.per_channel  # noqa: SLF001 - no public switch
    try:
        with warnings.catch_warnings():  # TF warns that int8 input statistics were not given; they come from data
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return bytes(converter.convert())
    except Exception as exc:  # TF raises ConverterError/ValueError/RuntimeError; unsupported ops land here
        data.raise_if_failed()
        raise ConversionError(f"TFLite int8 conversion of {fm.source_path.name} failed: {first_line(exc)}") from exc


def _from_flatbuffer(fm: FloatModel, data: _CheckedCalibration, profile: DeviceProfile) -> bytes:
    """Float TFLite (float32 constants) -> int8 flatbuffer via TensorFlow's post-training calibrator."""
    tf = import_tensorflow()
    from tensorflow.lite.python.optimize.calibrator import Calibrator

    assert fm.tflite_path is not None
    q = profile.quantization
    try:
        calibrator = Calibrator(fm.tflite_path.read_bytes())
        out = calibrator.calibrate_and_quantize(
            data,
            _tf_dtype(tf, q.input_dtype),
            _tf_dtype(tf, q.output_dtype),
            False,  # allow_float: full-integer only
            disable_per_channel=not q.per_channel,
        )
    except Exception as exc:  # the C++ wrapper raises RuntimeError/ValueError with the op that failed
        data.raise_if_failed()
        raise ConversionError(f"TFLite int8 calibration of {fm.source_path.name} failed: {first_line(exc)}") from exc
    return bytes(out)


def float_flatbuffer(fm: FloatModel) -> bytes:
    """The float32 TFLite form of ``fm`` (a Keras model or SavedModel converted without optimizations)."""
    if fm.tflite_path is not None:
        return fm.tflite_path.read_bytes()
    cached = fm.workdir / "float32-from-tf.tflite"
    if cached.is_file():
        return cached.read_bytes()
    tf = import_tensorflow()
    if fm.keras_model is not None:
        converter = tf.lite.TFLiteConverter.from_keras_model(fm.keras_model)
    else:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(fm.saved_model_dir))
    try:
        buf = bytes(converter.convert())
    except Exception as exc:  # TF raises ConverterError/ValueError for unsupported graphs
        raise ConversionError(f"float TFLite conversion of {fm.source_path.name} failed: {first_line(exc)}") from exc
    atomic_write_bytes(cached, buf)
    return buf


_SAME_SCALE_OPS = {"RESHAPE", "CONCATENATION", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE"}


def _constant(model: Any, tensor: Any) -> bool:
    return bool(tensor.buffer) and bool(tflite_graph.buffer_bytes(model, tensor.buffer))


def _set_ranges(calibrated: bytes, ranges: Mapping[str, tuple[float, float]]) -> bytes:
    """Give the named tensors (and, back through reshapes and concatenations, the tensors they are made of) the
    calibration range ``ranges[name]``: the quantizer then spends the 8-bit steps where the values matter."""
    model = tflite_graph.parse(calibrated, "calibrated model")
    sg = model.subgraphs[0]
    producer = {o: op for op in sg.operators or [] for o in op.outputs}
    by_name = {tflite_graph.tensor_name(t): i for i, t in enumerate(sg.tensors)}
    for name, (lo, hi) in ranges.items():
        todo = [by_name[name]] if name in by_name else []
        while todo:
            idx = todo.pop()
            q = sg.tensors[idx].quantization
            if q is not None:
                q.min, q.max = [float(lo)], [float(hi)]
            op = producer.get(idx)
            if op is not None and tflite_graph.op_name(model, op.opcodeIndex) in _SAME_SCALE_OPS:
                todo.extend(i for i in op.inputs if i >= 0 and not _constant(model, sg.tensors[i]))
    return tflite_graph.pack(model)


def _keeping_float(fm: FloatModel, data: _CheckedCalibration, profile: DeviceProfile, keep: Sequence[str],
                   ranges: Mapping[str, tuple[float, float]] | None = None) -> bytes:  # fmt: skip
    """int8 with the ops producing the tensors named in ``keep`` left in float (TF's MLIR quantizer denylist),
    and the tensors in ``ranges`` calibrated to the range given (score heads)."""
    tf = import_tensorflow()
    from tensorflow.lite.python.convert import mlir_quantize
    from tensorflow.lite.python.optimize.calibrator import Calibrator

    q = profile.quantization
    try:
        calibrated = Calibrator(float_flatbuffer(fm)).calibrate(data)
        if ranges:
            calibrated = _set_ranges(bytes(calibrated), ranges)
        out = mlir_quantize(
            calibrated,
            disable_per_channel=not q.per_channel,
            # fully_quantize=True would force int8 I/O whatever the types asked; without it the I/O follows
            # input/output_data_type (float32, int8 or uint8) and the body is quantized all the same
            fully_quantize=False,
            input_data_type=_tf_dtype(tf, q.input_dtype),
            output_data_type=_tf_dtype(tf, q.output_dtype),
            denylisted_nodes=list(keep),
        )
    except ConversionError:
        raise
    except Exception as exc:  # the quantizer raises RuntimeError/ValueError with the op that failed
        data.raise_if_failed()
        raise ConversionError(f"TFLite int8 quantization of {fm.source_path.name} failed: {first_line(exc)}") from exc
    return bytes(out)


def _rename_io(buf: bytes, fm: FloatModel) -> bytes:
    """Give the I/O tensors of a TFLiteConverter output the source model's names (not 'serving_default_x:0').

    The signature def maps each input by its source name and each output as ``output_<i>`` (or by its name), so
    the mapping does not depend on the order TFLite lists its tensors in.
    """
    model = tflite_graph.parse(buf, "quantized model")
    if not model.signatureDefs or len(model.subgraphs) != 1:
        return buf
    sig, sg = model.signatureDefs[0], model.subgraphs[0]
    renames: dict[int, str] = {}
    in_names = {i.name for i in fm.inputs}
    for tm in sig.inputs or []:
        key = tflite_graph.tensor_name(tm)
        if key in in_names:
            renames[tm.tensorIndex] = key
    out_names = [o.name for o in fm.outputs]
    for tm in sig.outputs or []:
        key = tflite_graph.tensor_name(tm)
        if key in out_names:
            renames[tm.tensorIndex] = key
        elif key.startswith("output_") and key[7:].isdigit() and int(key[7:]) < len(out_names):
            renames[tm.tensorIndex] = out_names[int(key[7:])]
    if len(set(renames.values())) != len(renames):
        return buf
    for index, name in renames.items():
        sg.tensors[index].name = name
    return tflite_graph.pack(model)


def _io_details(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise MissingDependencyError("ai-edge-litert", "tflite") from exc
    try:
        interp = Interpreter(model_path=str(path))
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise ConversionError(f"the quantized model does not load in LiteRT: {first_line(exc)}") from exc
    return interp.get_input_details(), interp.get_output_details()


def _tensor_info(d: dict[str, Any]) -> TensorInfo:
    # The concrete shape (batch 1), as the device allocates it; the float ONNX export is batch 1 too.
    return TensorInfo(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name)


def _quantization(d: dict[str, Any]) -> Quantization | None:
    qp = d.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", ()), dtype=np.float64)
    zps = np.asarray(qp.get("zero_points", ()), dtype=np.int64)
    if np.dtype(d["dtype"]).kind == "f" or scales.size == 0:
        return None
    axis = None if scales.size == 1 else int(qp.get("quantized_dimension", 0))
    return Quantization(scale=tuple(float(s) for s in scales), zero_point=tuple(int(z) for z in zps), axis=axis)


def float_ops(buf: bytes) -> tuple[str, ...]:
    """``OP:output_name`` for every operator reading or writing a float tensor, boundary QUANTIZE/DEQUANTIZE
    excluded (they exist exactly when the profile asks for float I/O)."""
    model = tflite_graph.parse(buf, "quantized model")
    found = []
    for sg in model.subgraphs:
        for op in sg.operators or []:
            name = tflite_graph.op_name(model, op.opcodeIndex)
            if name in _BOUNDARY_OPS:
                continue
            types = {tflite_graph.type_name(sg.tensors[i].type) for i in list(op.inputs) + list(op.outputs) if i >= 0}
            if types & {"FLOAT32", "FLOAT16"}:
                out = tflite_graph.tensor_name(sg.tensors[op.outputs[0]]) if len(op.outputs) else "?"
                found.append(f"{name}:{out}")
    return tuple(found)


def operator_types(buf: bytes) -> dict[str, set[str]]:
    """Operator name -> tensor types it touches (inputs and outputs): what a structure test checks."""
    model = tflite_graph.parse(buf, "model")
    out: dict[str, set[str]] = {}
    for sg in model.subgraphs:
        for op in sg.operators or []:
            types = {tflite_graph.type_name(sg.tensors[i].type) for i in list(op.inputs) + list(op.outputs) if i >= 0}
            out.setdefault(tflite_graph.op_name(model, op.opcodeIndex), set()).update(types)
    return out


def _verify_io(infos: tuple[TensorInfo, ...], want: str, what: str) -> None:
    for info in infos:
        if info.dtype != want:
            raise ConversionError(f"quantized model {what} {info.name!r} is {info.dtype}, the profile asks for {want}")


def quantize_tflite(
    fm: FloatModel,
    calibration: Calibration,
    profile: DeviceProfile,
    out_path: Path,
    method: str = "minmax",
    keep: Sequence[str] = (),
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> QuantizedModel:
    """Full-integer int8 TFLite for ``profile``; ``calibration()`` yields batch-1 float32 input lists.

    ``ranges``: tensor name -> (min, max) calibration range, for score heads (see converters.scores).

    ``keep``: tensor names (as :func:`converters.targets.tflite_sensitivity.rank_tensors` returns them) whose
    producing ops stay in float, the accuracy guard's last remedy; they are reported in ``float_nodes``.
    """
    if method not in SUPPORTED_METHODS:
        raise ConversionError(
            f"the TFLite int8 target calibrates with {', '.join(SUPPORTED_METHODS)} only (got {method!r})"
        )
    if fm.keras_model is None and fm.saved_model_dir is None and fm.tflite_path is None:
        raise ConversionError(f"{fm.source_format} model has no TensorFlow or TFLite form to quantize")
    data = _CheckedCalibration(calibration, fm.inputs)
    from_graph = fm.keras_model is not None or fm.saved_model_dir is not None
    if keep or ranges:
        buf = _keeping_float(fm, data, profile, keep, ranges)
    else:
        buf = _from_tf(fm, data, profile) if from_graph else _from_flatbuffer(fm, data, profile)
    data.raise_if_failed()
    if from_graph:
        buf = _rename_io(buf, fm)
    atomic_write_bytes(out_path, buf)
    ins, outs = _io_details(out_path)
    inputs, outputs = tuple(_tensor_info(d) for d in ins), tuple(_tensor_info(d) for d in outs)
    _verify_io(inputs, profile.quantization.input_dtype, "input")
    _verify_io(outputs, profile.quantization.output_dtype, "output")
    leftover = float_ops(buf)
    if leftover:
        log.warning("%d operator(s) still compute in float: %s", len(leftover), ", ".join(leftover[:5]))
    versions = dict(fm.tool_versions)
    versions.update(tool_versions("tensorflow", "tensorflow-cpu", "ai-edge-litert"))
    return QuantizedModel(
        format="tflite",
        path=out_path,
        precision="int8",
        method="tflite-mlir-int8-mixed"
        if keep
        else "tflite-mlir-int8-score-ranges"
        if ranges
        else "tflite-ptq-full-int8"
        if from_graph
        else "tflite-calibrator-full-int8",
        inputs=inputs,
        outputs=outputs,
        input_quantization=tuple(_quantization(d) for d in ins),
        output_quantization=tuple(_quantization(d) for d in outs),
        calibration_method=method,
        per_channel=profile.quantization.per_channel,
        symmetric_activations=False,  # TFLite int8 activations are asymmetric (zero point per tensor)
        float_nodes=leftover,
        tool_versions=versions,
    )
