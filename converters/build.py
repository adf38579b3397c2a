"""Build the target model for a conversion: a float copy, or int8 through the accuracy guard.

Each target format brings its own quantizer, the calibration methods it can do and its per-node error analysis
(the guard's last remedy): ONNX compares float and QDQ intermediate tensors; TFLite ranks the int8 model's ops
with :mod:`converters.targets.tflite_sensitivity` and re-quantizes with the worst ones denylisted (kept float).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from converters import calibration as cal
from converters import guard
from converters.context import Context, Outputs, decide_outputs
from converters.model import FloatModel, QuantizedModel
from converters.scores import as_decoded, score_ranges
from edge_runtime.package.manifest import AccuracyReport, InputSpec

Runner = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass
class Built:
    """The target model with its float reference and what the guard found."""

    model: QuantizedModel
    float_run: Runner
    outputs: Outputs
    accuracy: AccuracyReport | None
    remedies: list[str]


@dataclass
class TargetHooks:
    """What the guard needs from one target format."""

    float_run: Runner
    quantize: guard.Quantize
    sensitivity: guard.Sensitivity
    methods: Sequence[str]
    target: str


def packaged_specs(float_specs: list[InputSpec], qm: QuantizedModel) -> list[InputSpec]:
    """The packaged model's inputs: the float spec with the target's dtype and input quantization."""
    out = []
    for spec, t, q in zip(float_specs, qm.inputs, qm.input_quantization, strict=True):
        out.append(spec.model_copy(update={"name": t.name, "dtype": t.dtype, "quantization": q}))
    return out


def float_reference(fm: FloatModel) -> Runner:
    """A runner for the float model behind a TFLite target (float TFLite, else its ONNX form)."""
    from converters.evaluate import ModelRunner
    from converters.sources import ensure_onnx

    if fm.tflite_path is not None:
        return ModelRunner(fm.tflite_path).run_float
    return ModelRunner(ensure_onnx(fm)).run_float


def evaluator(ctx: Context, float_run: Runner, outs: Outputs, labels: list[int | None] | None) -> guard.Evaluate:
    """Float vs quantized outputs on the held-back samples, each fed as its model expects (and their labels)."""
    from converters.evaluate import ModelRunner

    # State outputs are fed back, not results: they are judged through the outputs of the next samples (the
    # held-back stream runs with the states the float model has), so they are left out of the metrics.
    state_out = {b.output for b in ctx.opts.state}
    keep = [i for i, t in enumerate(ctx.fm.outputs) if t.name not in state_out]
    cls = keep.index(outs.class_idx) if outs.class_idx is not None else None

    post = as_decoded(ctx.opts.decoding, [t.name for t in ctx.fm.outputs])

    def view(outs_: list[np.ndarray]) -> list[np.ndarray]:
        return [post[i](outs_[i]) if i in post else outs_[i] for i in keep]

    def evaluate(qm: QuantizedModel) -> guard.Agreement:
        qrun = ModelRunner(qm.path, output_quant=qm.output_quantization)
        qbuild = cal.InputBuilder(packaged_specs(ctx.fspecs, qm), ctx.vbuild.frame_order, ctx.vbuild.source)
        pairs = ((view(f), view(q))
                 for f, q in ((float_run(ctx.vbuild(s, i)), qrun.run_float(qbuild(s, i)))
                              for i, s in enumerate(ctx.valid)))  # fmt: skip
        return guard.measure(pairs, cls, labels, outs.activation)

    return evaluate


def held_back_labels(ctx: Context, outs: Outputs) -> list[int | None] | None:
    """Class indices of the held-back samples, when they are labelled and the model is a classifier."""
    from converters.labels import class_indices

    raw = ctx.valid.labels()
    if raw is None or outs.class_idx is None:
        return None
    indices = class_indices(raw, ctx.plan.labels, ctx.fm.outputs[outs.class_idx].shape[-1])
    ctx.say(f"held-back data: {sum(i is not None for i in indices)} of {len(indices)} samples labelled")
    return indices


def _budget(ctx: Context, outs: Outputs, labels: list[int | None] | None) -> dict[str, float]:
    labelled = labels is not None and all(i is not None for i in labels)
    return guard.budget_for(ctx.plan.profile, outs.class_idx is not None, labelled)


def onnx_hooks(ctx: Context) -> TargetHooks:
    """onnxruntime static QDQ, then integer I/O where the profile asks for it (see converters.targets.onnx_io);
    sensitivity from float vs QDQ intermediate tensors (SQNR drop per node)."""
    from converters.evaluate import ModelRunner
    from converters.sources import ensure_onnx
    from converters.targets import onnx_int8, onnx_io
    from converters.targets.onnx_sensitivity import onnx_sensitivity

    work, calibration, profile = ctx.work, ctx.calibration, ctx.plan.profile
    prepared = onnx_int8.preprocess(ensure_onnx(ctx.fm), work / "prepared.onnx")
    state = {n for b in ctx.opts.state for n in (b.input, b.output)}
    ranges = score_ranges(ctx.opts.decoding)

    def quantize(method: str, keep: Sequence[str], tag: str) -> QuantizedModel:
        ctx.say(f"quantizing to int8 ONNX ({method} calibration on {ctx.n_calib} samples)")
        qm = onnx_int8.quantize_onnx(prepared, calibration, profile, work / f"q-{tag}.onnx", method, keep, ranges)
        sample = next(iter(calibration()))
        return onnx_io.integer_io(qm, profile.quantization, work / f"q-{tag}.io.onnx", sample, keep_float=state)

    def sensitivity(qm: QuantizedModel) -> list[list[str]]:
        ctx.say("per-node error analysis (float vs int8 intermediate tensors)")
        names = [s.name for s in ctx.fspecs]
        few = lambda: itertools.islice(calibration(), 16)  # noqa: E731
        qdq = qm.float_io_path or qm.path  # fed the same float tensors as the float model
        return onnx_sensitivity(prepared, qdq, lambda: onnx_int8.reader(names, few), work)

    return TargetHooks(ModelRunner(prepared).run_float, quantize, sensitivity, onnx_int8.CALIBRATION_METHODS, "ONNX")


def tflite_hooks(ctx: Context) -> TargetHooks:
    """Full-int8 TFLite (minmax calibration only); sensitivity from per-op float vs int8 tensor errors.

    The model's own input and output tensors are never kept in float: their dtype is the profile's I/O contract.
    """
    from converters.targets.tflite_int8 import SUPPORTED_METHODS, float_flatbuffer, quantize_tflite
    from converters.targets.tflite_sensitivity import rank_tensors

    work, calibration = ctx.work, ctx.calibration

    def quantize(method: str, keep: Sequence[str], tag: str) -> QuantizedModel:
        kept = f", {len(keep)} op(s) kept in float" if keep else ""
        ctx.say(f"quantizing to int8 TFLite ({method} calibration on {ctx.n_calib} samples{kept})")
        path, ranges = work / f"q-{tag}.tflite", score_ranges(ctx.opts.decoding)
        return quantize_tflite(ctx.fm, calibration, ctx.plan.profile, path, method, keep, ranges)

    def sensitivity(qm: QuantizedModel) -> list[list[str]]:
        ctx.say("per-op error analysis (float vs int8 TFLite tensors)")
        io = {t.name for t in (*qm.inputs, *qm.outputs)}
        ranked = rank_tensors(float_flatbuffer(ctx.fm), qm.path, calibration, samples=8, top=8 + len(io))
        return [[name] for name in ranked if name not in io]

    return TargetHooks(float_reference(ctx.fm), quantize, sensitivity, SUPPORTED_METHODS, "TFLite")


def _float_target(ctx: Context) -> Built:
    """float32/float16 ONNX: no guard to pass, but the agreement with float is still measured."""
    from converters.evaluate import ModelRunner
    from converters.sources import ensure_onnx
    from converters.targets import onnx_int8

    float_onnx = ensure_onnx(ctx.fm)
    qm = onnx_int8.write_float_onnx(float_onnx, ctx.opts.precision, ctx.work / "model.out.onnx")
    float_run = ModelRunner(float_onnx).run_float
    outs = decide_outputs(ctx, float_run)
    labels = held_back_labels(ctx, outs)
    ag = evaluator(ctx, float_run, outs, labels)(qm)
    budget = _budget(ctx, outs, labels)
    return Built(qm, float_run, outs, guard.report(ag, budget), [])


def build_target(ctx: Context) -> Built:
    """Quantize (or copy in float) for the target format; int8 goes through the accuracy guard."""
    if ctx.plan.fmt == "onnx" and ctx.opts.precision != "int8":
        return _float_target(ctx)
    hooks = onnx_hooks(ctx) if ctx.plan.fmt == "onnx" else tflite_hooks(ctx)
    outs = decide_outputs(ctx, hooks.float_run)
    labels = held_back_labels(ctx, outs)
    evaluate = evaluator(ctx, hooks.float_run, outs, labels)
    budget = _budget(ctx, outs, labels)
    result = guard.guard(
        hooks.quantize, evaluate, budget, ctx.plan.method, hooks.sensitivity, ctx.say, ctx.opts.max_float_nodes,
        methods=hooks.methods, target=hooks.target,
    )  # fmt: skip
    return Built(result.model, hooks.float_run, outs, result.agreement, result.remedies)
