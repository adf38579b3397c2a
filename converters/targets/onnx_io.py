"""Integer I/O for a QDQ ONNX model: the graph takes int8/uint8 inputs and returns int8/uint8 outputs.

onnxruntime's ``quantize_static`` keeps float32 I/O: a QuantizeLinear right after each input and a
DequantizeLinear right before each output. On the device the preprocessing lookup table can produce the quantized
input directly (normalisation folded into quantization), so the input QuantizeLinear is a needless float round
trip: float32 tensors four times the size are written, read and re-quantized. Likewise the last
DequantizeLinear, since post-processing dequantizes with the manifest's scale and zero point itself.

For a profile whose ``input_dtype`` (``output_dtype``) is int8 or uint8, this rewrite removes them where that
is exact: an input read only by one QuantizeLinear with a constant per-tensor scale and zero point, whose output
feeds only DequantizeLinear nodes (the QDQ pattern); an output produced by a DequantizeLinear with constant
per-tensor parameters whose float result nothing else reads. Layout-only ops (Transpose, Reshape, ...) may sit
in between: they commute with per-tensor quantization and carry the integer tensor instead. The input keeps
its name and takes the integer type; the output keeps its name. Their scale and zero point go to the manifest.

The integer type is the one the quantizer chose for that tensor: uint8 with the asymmetric profiles' u8
activations, int8 with symmetric ones. Re-typing a uint8 tensor as int8 would put a conversion back into the
graph or stop onnxruntime fusing the first node group (its QLinearConv needs equal input and output types).
State tensors (fed back from output to input) stay float: their two ends have different scales.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.model import QuantizedModel, TensorInfo
from edge_runtime.package.manifest import Quantization
from edge_runtime.profiles import QuantizationPolicy
from edge_runtime.quant import dequantize, quantize

log = logging.getLogger(__name__)
INTEGER_DTYPES = ("int8", "uint8")
# Ops that only move or reshape values: they commute with per-tensor quantization and run on int8/uint8.
MOVE_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
QParams = tuple[Quantization, np.dtype]


def _qparams(node: Any, inits: dict[str, Any]) -> QParams | None:
    """Scale and zero point of a Quantize/DequantizeLinear when both are per-tensor constant initializers."""
    from onnx import numpy_helper

    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
        return None
    scale = numpy_helper.to_array(inits[node.input[1]])
    zp = numpy_helper.to_array(inits[node.input[2]])
    if scale.size != 1 or zp.size != 1 or zp.dtype not in (np.int8, np.uint8) or not float(scale.ravel()[0]) > 0:
        return None
    return Quantization(scale=(float(scale.ravel()[0]),), zero_point=(int(zp.ravel()[0]),)), zp.dtype


def _readers(graph: Any, name: str) -> list[Any]:
    return [n for n in graph.node if name in n.input]


def _retype(value_info: Any, dtype: np.dtype) -> None:
    import onnx

    value_info.type.tensor_type.elem_type = onnx.helper.np_dtype_to_tensor_dtype(dtype)


def _drop_value_info(graph: Any, names: Collection[str]) -> None:
    for vi in [v for v in graph.value_info if v.name in names]:
        graph.value_info.remove(vi)


def _single_reader(graph: Any, name: str) -> Any | None:
    readers = _readers(graph, name)
    return readers[0] if len(readers) == 1 and list(readers[0].input).count(name) == 1 else None


def integer_input(model: Any, name: str, inits: dict[str, Any]) -> QParams | None:
    """Remove the QuantizeLinear reading graph input ``name`` and feed its DequantizeLinear readers directly.

    Layout-only ops between the input and the QuantizeLinear (tf2onnx puts a Transpose to NCHW there) commute
    with per-tensor quantization, so they stay and simply carry the integer tensor.
    """
    g = model.graph
    outputs = {o.name for o in g.output}
    cur, chain, node = name, [], _single_reader(g, name)
    while node is not None and node.op_type in MOVE_OPS and node.input[0] == cur and cur not in outputs:
        chain.append(node)
        cur = node.output[0]
        node = _single_reader(g, cur)
    if node is None or node.op_type != "QuantizeLinear" or node.input[0] != cur or cur in outputs:
        return None
    q = node
    qp = _qparams(q, inits)
    if qp is None or q.output[0] in outputs:
        return None
    after = _readers(g, q.output[0])
    if not after or any(n.op_type != "DequantizeLinear" or list(n.input).index(q.output[0]) != 0 for n in after):
        return None
    for n in after:
        n.input[0] = cur
    g.node.remove(q)
    _drop_value_info(g, {q.output[0], *(n.output[0] for n in chain)})  # chain tensors are integer now
    _retype(next(i for i in g.input if i.name == name), qp[1])
    return qp


def integer_output(model: Any, name: str, inits: dict[str, Any]) -> QParams | None:
    """Remove the DequantizeLinear producing graph output ``name``; its integer input becomes the output.

    Layout-only ops between that DequantizeLinear and the output stay and carry the integer tensor.
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    graph_names = {i.name for i in g.input} | {o.name for o in g.output} | set(inits)
    if _readers(g, name):
        return None
    cur, chain = name, []
    while cur in producer and producer[cur].op_type in MOVE_OPS:
        chain.append(producer[cur])
        cur = producer[cur].input[0]
        if cur in graph_names or _single_reader(g, cur) is None:
            return None
    dq = producer.get(cur)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    qp = _qparams(dq, inits)
    src = dq.input[0]
    if qp is None or src not in producer or src in graph_names:
        return None
    g.node.remove(dq)
    if chain:  # the first layout op reads the integer tensor; the output keeps its producer
        chain[-1].input[0] = src
    else:  # the integer tensor takes the output's name, so decodings naming it still apply
        for n in g.node:
            for field in (n.input, n.output):
                for k, v in enumerate(field):
                    if v == src:
                        field[k] = name
    _drop_value_info(g, {src, name, cur, *(n.output[0] for n in chain)})
    _retype(next(o for o in g.output if o.name == name), qp[1])
    return qp


def _prune_initializers(model: Any) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def _retyped(infos: Sequence[TensorInfo], qps: Sequence[QParams | None]) -> tuple[TensorInfo, ...]:
    return tuple(
        t if qp is None else dataclasses.replace(t, dtype=np.dtype(qp[1]).name)
        for t, qp in zip(infos, qps, strict=True)
    )


def disagreement(float_io: QuantizedModel, int_io: QuantizedModel, inputs: list[np.ndarray]) -> str | None:
    """Run both forms on one sample: integer outputs must agree within one quantization step. None when they do.

    Float outputs (a float op after the last DequantizeLinear) get 1% of their peak: input rounding may differ
    by one step on a tie, and this check is about the rewiring, not about rounding.
    """
    from converters.evaluate import ModelRunner

    ref = ModelRunner(float_io.path).run(inputs)
    fed = [
        quantize(x, q, np.dtype(t.dtype)) if q is not None else x
        for x, t, q in zip(inputs, int_io.inputs, int_io.input_quantization, strict=True)
    ]
    got = ModelRunner(int_io.path).run(fed)
    for t, q, r, y in zip(int_io.outputs, int_io.output_quantization, ref, got, strict=True):
        if y.dtype != np.dtype(t.dtype):
            return f"output {t.name!r} is {y.dtype}, expected {t.dtype}"
        r = r.astype(np.float64)
        tol = q.scale[0] * 1.001 if q is not None else 0.01 * max(1.0, float(np.max(np.abs(r), initial=0.0)))
        err = float(np.max(np.abs(dequantize(y, q).astype(np.float64) - r), initial=0.0))
        if err > tol:
            return f"output {t.name!r} differs by {err:.4g} (allowed {tol:.4g})"
    return None


def integer_io(
    qm: QuantizedModel,
    policy: QuantizationPolicy,
    out_path: Path,
    sample: list[np.ndarray],
    keep_float: Collection[str] = (),
) -> QuantizedModel:
    """``qm`` with integer inputs/outputs where the profile asks for them (see the module docstring).

    ``sample``: one float input set (as the float-I/O model takes it) to check the rewritten model on.
    ``keep_float``: tensor names left float (state bindings). Returns ``qm`` unchanged when nothing applies.
    """
    import onnx

    want_in, want_out = policy.input_dtype in INTEGER_DTYPES, policy.output_dtype in INTEGER_DTYPES
    if qm.format != "onnx" or qm.precision != "int8" or not (want_in or want_out):
        return qm
    model = onnx.load(str(qm.path))
    inits = {i.name: i for i in model.graph.initializer}
    in_qp = [integer_input(model, t.name, inits) if want_in and t.name not in keep_float else None for t in qm.inputs]
    out_qp = [
        integer_output(model, t.name, inits) if want_out and t.name not in keep_float else None for t in qm.outputs
    ]
    if not any(in_qp) and not any(out_qp):
        log.info("no QDQ input or output pattern to rewrite; the model keeps float I/O")
        return qm
    _prune_initializers(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:  # a rewiring bug must not ship: keep the float-I/O model
        log.warning("integer I/O rewrite rejected (%s); the model keeps float I/O", str(exc).splitlines()[0])
        return qm
    onnx.save(model, str(out_path))
    new = dataclasses.replace(
        qm,
        path=Path(out_path),
        inputs=_retyped(qm.inputs, in_qp),
        outputs=_retyped(qm.outputs, out_qp),
        input_quantization=tuple(qp[0] if qp else q for qp, q in zip(in_qp, qm.input_quantization, strict=True)),
        output_quantization=tuple(qp[0] if qp else q for qp, q in zip(out_qp, qm.output_quantization, strict=True)),
        float_io_path=qm.path,
    )
    problem = disagreement(qm, new, sample)
    if problem is not None:  # a rewiring bug must not ship: keep the float-I/O model, which is known to be right
        log.warning("integer I/O rewrite rejected (%s); the model keeps float I/O", problem)
        return qm
    return new
