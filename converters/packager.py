"""Assemble the manifest and the files of a model package and write it atomically (and optionally an archive).

write_package builds the package in a temporary folder beside ``--out`` and renames it into place only when
complete, so a failure at any step leaves no package behind.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from converters.model import QuantizedModel
from converters.refstats import RefStatsBuilder
from edge_runtime.errors import ConversionError
from edge_runtime.package.manifest import (
    AccuracyReport,
    ClassificationDecoding,
    GoldenSet,
    InputSpec,
    OutputSpec,
    QuantizationInfo,
    RawDecoding,
    ReferenceStats,
    SourceInfo,
    StateBinding,
    TensorSpec,
)
from edge_runtime.package.optimization import PruningInfo
from edge_runtime.package.provenance import Provenance
from edge_runtime.package.signing import Ed25519PrivateKey
from edge_runtime.package.store import Package, pack_archive, write_package

GOLDEN_FILE = "golden.npz"


@dataclass
class PackageParts:
    """Everything the manifest says, gathered by the pipeline."""

    name: str
    version: str
    profile: str
    model: QuantizedModel
    inputs: Sequence[InputSpec]
    outputs: OutputSpec
    quantization: QuantizationInfo
    accuracy: AccuracyReport | None
    reference: ReferenceStats | None
    golden: Sequence[tuple[list[np.ndarray], list[np.ndarray]]]
    golden_atols: tuple[float, ...]
    source: SourceInfo | None
    tools: dict[str, str]
    extra_files: Mapping[str, bytes | Path] = field(default_factory=dict)
    state: Sequence[StateBinding] = ()
    pruning: PruningInfo | None = None
    provenance: Provenance | None = None


def golden_bytes(pairs: Sequence[tuple[list[np.ndarray], list[np.ndarray]]]) -> bytes:
    """golden.npz: input_<i>_<k> exactly as fed to the packaged model, output_<i>_<k> exactly as it returned."""
    arrays: dict[str, np.ndarray] = {}
    for i, (ins, outs) in enumerate(pairs):
        arrays.update({f"input_{i}_{k}": np.asarray(x) for k, x in enumerate(ins)})
        arrays.update({f"output_{i}_{k}": np.asarray(y) for k, y in enumerate(outs)})
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def onnx_output_steps(path: Path) -> list[float | None]:
    """Per output: the scale of the DequantizeLinear that produces it (its quantization step), if any."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    steps: list[float | None] = []
    for out in model.graph.output:
        node = producer.get(out.name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in inits:
            steps.append(float(np.max(numpy_helper.to_array(inits[node.input[1]]))))
        else:
            steps.append(None)
    return steps


def golden_atols(
    model: QuantizedModel, pairs: Sequence[tuple[list[np.ndarray], list[np.ndarray]]]
) -> tuple[float, ...]:
    """Tolerance of the device's golden check, per output tensor (model order).

    Outputs live on different scales (BlazeFace: box offsets in input pixels, score logits), so each gets its own:
    float models: 1e-4 of the output's largest value (at least 1e-4; float16 2e-3): other CPUs and thread counts
    sum in other orders. int8 models: 1.5 quantization steps of the output, since int8 kernels on another CPU
    may round one step apart; an output with no step of its own (a float op after the last DequantizeLinear)
    gets 2% of its largest value. Integer outputs that are not quantized (labels) must match exactly: 0.
    """
    steps: list[float | None] = [None] * len(model.outputs)
    if model.precision == "int8":
        steps = [q.scale[0] if q else None for q in model.output_quantization]  # integer outputs: their own step
        if model.format == "onnx":  # float outputs of a QDQ model: the step of the DequantizeLinear making them
            steps = [s if s is not None else d for s, d in zip(steps, onnx_output_steps(model.path), strict=True)]
    atols = []
    for k, t in enumerate(model.outputs):
        if not (t.dtype.startswith("float") or model.output_quantization[k]):
            atols.append(0.0)
            continue
        peak = max((float(np.max(np.abs(outs[k].astype(np.float64)), initial=0.0)) for _, outs in pairs), default=1.0)
        if model.precision == "float32":
            atols.append(1e-4 * max(1.0, peak))
        elif model.precision == "float16":
            atols.append(2e-3 * max(1.0, peak))
        elif steps[k] is not None:
            atols.append(1.5 * float(steps[k]))
        else:
            atols.append(0.02 * max(peak, 1e-6))
    return tuple(atols)


def golden_atol(atols: Sequence[float]) -> float:
    """The single ``atol`` older runtimes read: the loosest per-output tolerance (1e-4 if there are none)."""
    return max(atols, default=1e-4)


def class_output(outputs, task, decoding, labels) -> int | None:  # type: ignore[no-untyped-def]
    """Index of the class-score output: named by a classification decoding, else the one float [1, C] output."""
    if decoding is not None:
        if decoding.type != "classification":
            return None
        names = [t.name for t in outputs]
        if decoding.output not in names:
            raise ConversionError(f"decoding names output {decoding.output!r}; the model's outputs are {names}")
        return names.index(decoding.output)
    if task in ("raw", "detection"):
        return None
    cands = [i for i, t in enumerate(outputs) if t.dtype.startswith("float") and len(t.shape) == 2 and t.shape[-1] >= 2]
    if len(cands) == 1:
        return cands[0]
    if task == "classification" or labels:
        raise ConversionError(
            f"cannot tell which output holds class scores (outputs: {[(t.name, list(t.shape)) for t in outputs]})"
        )
    return None


def score_activation(samples: Sequence[np.ndarray]) -> str:
    """'none' when the scores already are probabilities (non-negative, rows summing to 1), else 'softmax'."""
    rows = np.concatenate([s.reshape(1, -1).astype(np.float64) for s in samples])
    if np.all(rows >= -1e-6) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        return "none"
    return "softmax"


def output_spec(qm, class_idx, labels, activation, decoding, task) -> OutputSpec:  # type: ignore[no-untyped-def]
    """Outputs of the packaged model, with labels and how to decode them."""
    tensors = [tensor_spec(t, q) for t, q in zip(qm.outputs, qm.output_quantization, strict=True)]
    if decoding is None and class_idx is not None:
        classes = int(qm.outputs[class_idx].shape[-1])
        if labels is not None and len(labels) != classes:
            raise ConversionError(f"{len(labels)} labels given but the model scores {classes} classes")
        decoding = ClassificationDecoding(
            output=qm.outputs[class_idx].name, activation=activation, top_k=min(5, classes)
        )
    decoding = decoding or RawDecoding()
    task = {"classification": "classification", "ssd": "detection", "yolo": "detection"}.get(decoding.type, "raw")
    return OutputSpec(task=task, tensors=tuple(tensors), labels=labels, decoding=decoding)


def reference_stats(spec, frame_order, calib, build, float_run, class_idx, activation) -> ReferenceStats:  # type: ignore[no-untyped-def]
    """One pass over the calibration data: raw inputs and the float model's outputs."""
    rs = RefStatsBuilder(spec, frame_order, class_idx, activation)
    num_classes = None
    for i, raw in enumerate(calib):
        rs.add_input(raw)
        outs = float_run(build(raw, i))
        rs.add_outputs(outs)
        if class_idx is not None:
            num_classes = int(outs[class_idx].size)
    return rs.result(num_classes)


def golden_pairs(qm, qbuild, valid, count: int) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:  # type: ignore[no-untyped-def]
    """The first ``count`` held-back samples through the packaged model, exactly as the device will feed it."""
    from converters.evaluate import ModelRunner

    runner = ModelRunner(qm.path)
    pairs = []
    for i, raw in enumerate(valid):
        if i >= count:
            break
        ins = qbuild(raw, i)
        pairs.append((ins, runner.run(ins)))
    return pairs


def tensor_spec(t, q=None) -> TensorSpec:  # type: ignore[no-untyped-def]
    dtype = t.dtype if t.dtype in ("float32", "float16", "int8", "uint8", "int32", "int64", "bool") else "float32"
    return TensorSpec(name=t.name, shape=t.shape, dtype=dtype, quantization=q)


def write(
    parts: PackageParts,
    out_dir: Path,
    sign_key: Ed25519PrivateKey | None = None,
    overwrite: bool = False,
    archive: Path | None = None,
) -> Package:
    """Write the package directory (atomically), then the .erpkg archive when asked."""
    model_file = f"model.{parts.model.format}"
    files: dict[str, bytes | Path] = {model_file: parts.model.path, **parts.extra_files}
    golden = None
    if parts.golden:
        files[GOLDEN_FILE] = golden_bytes(parts.golden)
        golden = GoldenSet(
            file=GOLDEN_FILE,
            count=len(parts.golden),
            atol=golden_atol(parts.golden_atols),
            atol_per_output=parts.golden_atols,
            top1_must_match=parts.outputs.task == "classification",
        )
    fields = {
        "name": parts.name,
        "version": parts.version,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "format": parts.model.format,
        "profile": parts.profile,
        "model_file": model_file,
        "inputs": [i.model_dump() for i in parts.inputs],
        "outputs": parts.outputs.model_dump(),
        "state": [s.model_dump() for s in parts.state],
        "quantization": parts.quantization.model_dump(),
        "accuracy": parts.accuracy.model_dump() if parts.accuracy else None,
        "reference": parts.reference.model_dump() if parts.reference else None,
        "golden": golden.model_dump() if golden else None,
        "source": parts.source.model_dump() if parts.source else None,
        "tools": parts.tools,
        "pruning": parts.pruning.model_dump() if parts.pruning else None,
        "provenance": parts.provenance.model_dump(mode="json") if parts.provenance else None,
    }
    pkg = write_package(out_dir, files, fields, sign_key=sign_key, overwrite=overwrite)
    if archive is not None:
        pack_archive(pkg.root, archive)
    return pkg
