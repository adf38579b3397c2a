"""Rewrite a TFLite flatbuffer so TensorFlow's quantizer can take it: float16 constants unfolded to float32.

Older MediaPipe models (BlazeFace and friends) store weights as float16 behind ``DEQUANTIZE`` ops and carry no
signature defs. TensorFlow's post-training calibrator wants float32 constants and a signature, so this module
folds each ``DEQUANTIZE(const float16)`` into a float32 constant, drops what became unused (tensors, operator
codes - TF's parser rejects ``DEQUANTIZE`` version 2 - and buffers, else the file stays large) and adds a
``serving_default`` signature. Needs only ai-edge-litert's generated schema and ``flatbuffers``, not TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.errors import ConversionError, MissingDependencyError

TFLITE_IDENTIFIER = b"TFL3"
SIGNATURE_KEY = "serving_default"


def schema() -> Any:
    """ai-edge-litert's generated TFLite schema module (object API)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as exc:
        raise MissingDependencyError("ai-edge-litert (the TFLite schema)", "tflite") from exc
    return schema_py_generated


def parse(buf: bytes, what: str = "model") -> Any:
    """Flatbuffer bytes -> ``ModelT``; a file that is not a TFLite model raises ConversionError."""
    fb = schema()
    if len(buf) < 8 or buf[4:8] != TFLITE_IDENTIFIER:
        raise ConversionError(f"{what} is not a TFLite flatbuffer (missing the 'TFL3' identifier)")
    try:
        model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(buf, 0))
    except Exception as exc:  # flatbuffers raises anything from IndexError to struct.error on a truncated file
        raise ConversionError(f"{what} is a corrupt or truncated TFLite flatbuffer") from exc
    if not model.subgraphs:
        raise ConversionError(f"{what} has no subgraphs")
    return model


def pack(model: Any) -> bytes:
    """``ModelT`` -> flatbuffer bytes with the ``TFL3`` file identifier."""
    import flatbuffers

    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def builtin_code(model: Any, opcode_index: int) -> int:
    """The builtin operator code of an operator-code entry (new field, or the deprecated int8 one)."""
    oc = model.operatorCodes[opcode_index]
    return max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))


def op_name(model: Any, opcode_index: int) -> str:
    """Readable operator name, e.g. ``CONV_2D`` (custom ops by their custom code)."""
    fb = schema()
    oc = model.operatorCodes[opcode_index]
    code = builtin_code(model, opcode_index)
    if code == fb.BuiltinOperator.CUSTOM:
        return (oc.customCode or b"CUSTOM").decode() if isinstance(oc.customCode, bytes) else str(oc.customCode)
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    return names.get(code, f"OP_{code}")


def type_name(tensor_type: int) -> str:
    fb = schema()
    names = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    return names.get(int(tensor_type), f"TYPE_{tensor_type}")


def buffer_bytes(model: Any, index: int) -> bytes:
    data = model.buffers[index].data
    return b"" if data is None else np.asarray(data, dtype=np.uint8).tobytes()


def tensor_name(tensor: Any) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)


@dataclass(frozen=True)
class UnfoldReport:
    """What :func:`unfold_float16` changed."""

    dequantize_folded: int
    signature_added: bool


def _fold_dequantize(model: Any) -> int:
    """Give each ``DEQUANTIZE(const float16)`` output a float32 buffer and drop the op. Returns how many."""
    fb = schema()
    folded = 0
    for sg in model.subgraphs:
        kept = []
        for op in sg.operators or []:
            src = sg.tensors[op.inputs[0]] if op.inputs is not None and len(op.inputs) == 1 else None
            if (
                builtin_code(model, op.opcodeIndex) == fb.BuiltinOperator.DEQUANTIZE
                and src is not None
                and src.type == fb.TensorType.FLOAT16
                and buffer_bytes(model, src.buffer)
            ):
                values = np.frombuffer(buffer_bytes(model, src.buffer), dtype=np.float16).astype(np.float32)
                buf = fb.BufferT()
                buf.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
                model.buffers.append(buf)
                sg.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
                folded += 1
                continue
            kept.append(op)
        sg.operators = kept
    return folded


def _compact_tensors(sg: Any) -> dict[int, int]:
    """Drop tensors no operator, input or output uses, renumber the rest; returns old -> new index."""
    used: set[int] = set(int(i) for i in list(sg.inputs) + list(sg.outputs))
    for op in sg.operators or []:
        used.update(int(i) for i in list(op.inputs) + list(op.outputs) if i >= 0)
        if op.intermediates is not None:
            used.update(int(i) for i in op.intermediates if i >= 0)
    order = sorted(used)
    remap = {old: new for new, old in enumerate(order)}
    sg.tensors = [sg.tensors[i] for i in order]

    def _r(idx: Any) -> list[int]:
        return [remap[int(i)] if i >= 0 else -1 for i in idx]

    sg.inputs, sg.outputs = _r(sg.inputs), _r(sg.outputs)
    for op in sg.operators or []:
        op.inputs, op.outputs = _r(op.inputs), _r(op.outputs)
        if op.intermediates is not None:
            op.intermediates = _r(op.intermediates)
    return remap


def _compact_opcodes(model: Any) -> None:
    used = sorted({op.opcodeIndex for sg in model.subgraphs for op in sg.operators or []})
    remap = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[i] for i in used]
    for sg in model.subgraphs:
        for op in sg.operators or []:
            op.opcodeIndex = remap[op.opcodeIndex]


def _compact_buffers(model: Any) -> None:
    """Keep buffer 0 (the empty sentinel), buffers tensors use and metadata buffers; renumber the rest."""
    used = {0}
    used.update(t.buffer for sg in model.subgraphs for t in sg.tensors)
    used.update(m.buffer for m in model.metadata or [])
    order = sorted(used)
    remap = {old: new for new, old in enumerate(order)}
    model.buffers = [model.buffers[i] for i in order]
    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = remap[t.buffer]
    for m in model.metadata or []:
        m.buffer = remap[m.buffer]
    if model.metadataBuffer is not None:
        model.metadataBuffer = [remap[i] for i in model.metadataBuffer if i in remap]


def _add_signature(model: Any) -> None:
    fb = schema()
    sg = model.subgraphs[0]
    sig = fb.SignatureDefT()
    sig.signatureKey = SIGNATURE_KEY
    sig.subgraphIndex = 0
    sig.inputs, sig.outputs = [], []
    for indices, target in ((sg.inputs, sig.inputs), (sg.outputs, sig.outputs)):
        for i in indices:
            tm = fb.TensorMapT()
            tm.name = tensor_name(sg.tensors[i])
            tm.tensorIndex = int(i)
            target.append(tm)
    model.signatureDefs = [sig]


def unfold_float16(buf: bytes, what: str = "model") -> tuple[bytes, UnfoldReport]:
    """Return an equivalent flatbuffer with float32 constants, no orphans, and a signature def."""
    model = parse(buf, what)
    if any(b.offset for b in model.buffers):
        raise ConversionError(f"{what} stores buffers outside the flatbuffer (>2 GB models are not supported)")
    folded = _fold_dequantize(model)
    if folded:
        remaps = [_compact_tensors(sg) for sg in model.subgraphs]
        for sig in model.signatureDefs or []:
            for tm in list(sig.inputs or []) + list(sig.outputs or []):
                tm.tensorIndex = remaps[sig.subgraphIndex][tm.tensorIndex]
        _compact_opcodes(model)
        _compact_buffers(model)
    added = not model.signatureDefs
    if added:
        _add_signature(model)
    if not folded and not added:
        return buf, UnfoldReport(0, False)
    return pack(model), UnfoldReport(folded, added)
