"""Per-op quantization error of an int8 TFLite model against its float form: which ops to keep in float.

Both models run on the same calibration samples with every intermediate tensor preserved (no delegate, so
nothing is fused away). For each tensor present in both (the quantizers keep tensor names) the error is the RMS
difference of the dequantized int8 values from the float values, relative to the float values' spread. An op's
*own* contribution is the error of its output minus the largest error of its inputs, so the ranking points at
where error is added rather than at the end of the network, where it has merely accumulated.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converters.sources import tflite_graph
from edge_runtime.errors import MissingDependencyError

Calibration = Callable[[], Iterator[list[np.ndarray]]]
_SKIP = ("QUANTIZE", "DEQUANTIZE")


def _interpreter(**kwargs: Any) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as exc:
        raise MissingDependencyError("ai-edge-litert", "tflite") from exc
    interp = Interpreter(
        **kwargs,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    interp.allocate_tensors()
    return interp


def _values(interp: Any) -> dict[str, np.ndarray]:
    """Every readable tensor as float32 (int8/uint8 dequantized with its per-tensor parameters)."""
    out = {}
    for d in interp.get_tensor_details():
        try:
            v = interp.get_tensor(d["index"])
        except ValueError:  # tensors without data (e.g. optional inputs)
            continue
        qp = d.get("quantization_parameters") or {}
        scales = np.asarray(qp.get("scales", ()), dtype=np.float32)
        if v.dtype.kind in "iu" and scales.size == 1:
            v = (v.astype(np.float32) - float(np.asarray(qp["zero_points"])[0])) * float(scales[0])
        if v.dtype.kind == "f":
            out[d["name"]] = v.astype(np.float32)
    return out


def _feed(interp: Any, sample: list[np.ndarray]) -> None:
    for d, x in zip(interp.get_input_details(), sample, strict=True):
        if np.dtype(d["dtype"]).kind in "iu":
            scale, zp = d["quantization"]
            info = np.iinfo(d["dtype"])
            x = np.clip(np.rint(x / scale) + zp, info.min, info.max).astype(d["dtype"])
        interp.set_tensor(d["index"], x)
    interp.invoke()


def tensor_errors(float_model: bytes, quant_path: Path, calibration: Calibration, samples: int = 8) -> dict[str, float]:
    """Mean relative RMS error per tensor name shared by the float and the int8 model."""
    fi, qi = _interpreter(model_content=float_model), _interpreter(model_path=str(quant_path))
    sums: dict[str, float] = {}
    count = 0
    for sample in itertools.islice(calibration(), samples):
        _feed(fi, sample)
        _feed(qi, sample)
        fv, qv = _values(fi), _values(qi)
        for name in fv.keys() & qv.keys():
            f, q = fv[name], qv[name]
            if f.shape != q.shape or f.size == 0:
                continue
            spread = float(np.std(f)) or 1.0
            sums[name] = sums.get(name, 0.0) + float(np.sqrt(np.mean((q - f) ** 2))) / spread
        count += 1
    return {k: v / max(count, 1) for k, v in sums.items()}


def rank_tensors(
    float_model: bytes, quant_path: Path, calibration: Calibration, samples: int = 8, top: int = 10
) -> list[str]:
    """Output tensor names of the int8 model's ops, the ones adding the most quantization error first."""
    errors = tensor_errors(float_model, quant_path, calibration, samples)
    model = tflite_graph.parse(quant_path.read_bytes(), "quantized model")
    sg = model.subgraphs[0]
    contributions = []
    for op in sg.operators or []:
        if tflite_graph.op_name(model, op.opcodeIndex) in _SKIP or not len(op.outputs):
            continue
        out = tflite_graph.tensor_name(sg.tensors[op.outputs[0]])
        if out not in errors:
            continue
        ins = [errors.get(tflite_graph.tensor_name(sg.tensors[i]), 0.0) for i in op.inputs if i >= 0]
        contributions.append((errors[out] - max(ins, default=0.0), out))
    contributions.sort(reverse=True)
    return [name for gain, name in contributions[:top] if gain > 0]
