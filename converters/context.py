"""The inputs of one conversion, loaded and checked: the float model, its input specs, calibration and
held-back data. ``open_context`` does the I/O; the Context it returns is not changed afterwards."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters import calibration as cal
from converters.model import FloatModel, InputFixes
from converters.options import ConvertOptions, Plan
from edge_runtime.errors import ConversionError
from edge_runtime.package.manifest import InputSpec

Progress = Callable[[str], None]


def open_data(opts: ConvertOptions, p: Plan, names: list[str]) -> tuple[cal.Subset, cal.Subset, cal.Dataset]:
    """Calibration and held-back subsets (a share of calibration when no validation data is given)."""

    def dataset(d: Path | cal.Dataset, count: int) -> cal.Dataset:
        return d if isinstance(d, cal.Dataset) else cal.open_dataset(d, names, count)

    if opts.validation is None:
        data = dataset(opts.calibration, math.ceil(p.max_samples / (1 - opts.holdout)))
        if len(data) < 2:
            raise ConversionError(f"{data.description}: need at least 2 samples to hold some back for validation")
        calib = cal.Subset(data, "calibration", p.max_samples, opts.holdout)
        valid = cal.Subset(data, "validation", p.max_samples, opts.holdout)
        return calib, valid, data
    data = dataset(opts.calibration, p.max_samples)
    return cal.Subset(data, "all", p.max_samples), cal.Subset(dataset(opts.validation, p.max_samples)), data


def _open_data(opts: ConvertOptions, p: Plan, fm: FloatModel, fspecs: list[InputSpec]):  # type: ignore[no-untyped-def]
    """open_data, with each sample's state added for a stateful model (converters.state)."""
    if not opts.state:
        return open_data(opts, p, [s.name for s in fspecs])
    from converters.sources import ensure_onnx
    from converters.state import RolledState, check_bindings

    check_bindings(fm, opts.state)
    state = {b.input for b in opts.state}
    calib, valid, data = open_data(opts, p, [s.name for s in fspecs if s.name not in state])
    rolled = {id(d): RolledState(d, fspecs, opts.state, ensure_onnx(fm)) for d in (data, valid.dataset)}
    wrap = lambda sub: cal.Subset(rolled[id(sub.dataset)], sub.part, sub.limit, sub.holdout)  # noqa: E731
    return wrap(calib), wrap(valid), rolled[id(data)]


def _guess_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and (shape[-1] in (1, 3) or shape[1] in (1, 3))


def input_specs(fm: FloatModel, opts: ConvertOptions) -> list[InputSpec]:
    """The float model's input specs: how raw data becomes each input (float32, same normalisation as int8)."""
    if opts.input_spec is not None:
        if len(fm.inputs) != 1 or opts.input_spec.name != fm.inputs[0].name:
            raise ConversionError(
                f"input_spec names {opts.input_spec.name!r}; the model's inputs are {[i.name for i in fm.inputs]}"
            )
        return [opts.input_spec]
    unknown = sorted(set(opts.input_kinds) - {t.name for t in fm.inputs})
    if unknown:
        raise ConversionError(f"--input-kind {unknown[0]}=...: the model has no input {unknown[0]!r} "
                              f"(inputs: {', '.join(t.name for t in fm.inputs)})")  # fmt: skip
    state = {b.input for b in opts.state}
    data = [t for t in fm.inputs if t.name not in state]
    specs = []
    for t in fm.inputs:
        if t.dtype not in ("float32", "float16", "float64", "int32", "int64") or (
            t.dtype.startswith("int") and (t.name in state or opts.input_kinds.get(t.name) == "image")
        ):
            raise ConversionError(f"input {t.name!r} has dtype {t.dtype}; float inputs, and integer tensors fed as "
                                  f"they are, can be calibrated (a constant one: --const {t.name}=VALUE)")  # fmt: skip
        try:
            specs.append(_spec(t, opts, t.name in state, len(data) == 1, t is data[0]))
        except ValueError as exc:
            raise ConversionError(f"input {t.name!r}: {str(exc).splitlines()[-1].strip()}") from exc
    return specs


def _spec(t, opts: ConvertOptions, is_state: bool, single: bool, first_data: bool) -> InputSpec:  # type: ignore[no-untyped-def]
    guess = "image" if _guess_image(t.shape) and single and not is_state else "tensor"
    kind = "tensor" if is_state else opts.input_kinds.get(t.name) or opts.input_kind or guess
    integer = t.dtype.startswith("int")  # token ids, byte values: fed as they are, never normalised
    fields: dict = {"name": t.name, "shape": t.shape, "dtype": t.dtype if integer else "float32", "kind": kind}
    if integer:
        return InputSpec(**{**fields, "kind": "tensor"})
    if kind == "image":
        if len(t.shape) != 4 or min(t.shape[1:]) < 1:
            raise ConversionError(f"image input {t.name!r} needs a fixed 4-D shape, has {list(t.shape)}: give "
                                  f"--input-shape {t.name}=1,H,W,C (or 1,C,H,W)")  # fmt: skip
        layout = opts.layout or ("NCHW" if t.shape[1] in (1, 3) and t.shape[3] not in (1, 3) else "NHWC")
        channels = t.shape[1] if layout == "NCHW" else t.shape[3]
        fields.update(
            layout=layout, resize=opts.resize, color_order=opts.color_order or ("GRAY" if channels == 1 else "RGB")
        )
        if opts.pad_value is not None:
            fields["pad_value"] = opts.pad_value
        norm = {"mean": opts.mean or (0.0,), "std": opts.std or (255.0,)}
    elif is_state:
        norm = {"mean": (0.0,), "std": (1.0,)}
    else:
        norm = {"mean": opts.mean or (0.0,), "std": opts.std or (1.0,)}
        if opts.window_hop is not None and first_data:
            fields["window_hop"] = opts.window_hop
    return InputSpec(**fields, normalization=norm)


@dataclass(frozen=True)
class Context:
    """What the stages of one conversion read: made once by :func:`open_context`, never changed."""

    opts: ConvertOptions
    plan: Plan
    work: Path
    say: Progress
    fm: FloatModel
    fspecs: list[InputSpec]
    calib: cal.Subset
    valid: cal.Subset
    data: cal.Dataset
    fbuild: cal.InputBuilder
    vbuild: cal.InputBuilder
    fingerprint: str
    n_calib: int

    def calibration(self) -> Iterator[list[np.ndarray]]:
        return self.fbuild.over(self.calib)


@dataclass(frozen=True)
class Outputs:
    """Which output holds class scores (if any) and the activation they still need."""

    class_idx: int | None
    activation: str


def open_context(opts: ConvertOptions, p: Plan, work: Path, say: Progress) -> Context:
    """Load the source model and open (and read through once) the calibration and held-back data."""
    from converters.sources import load_source

    say(f"loading {opts.source}")
    fixed = InputFixes(opts.input_shapes, opts.constants)
    fm = load_source(Path(opts.source), work, opts.input_shape, fixed)
    if opts.constants:
        say(f"folded constant input(s) {', '.join(f'{k}={v}' for k, v in opts.constants.items())} into the graph")
    if opts.decoding is not None and opts.decoding.type in ("ssd", "yolo"):
        from converters.decoding_file import check_against_model

        anchors = opts.extra_files.get(opts.decoding.anchors_file) if opts.decoding.type == "ssd" else None
        check_against_model(opts.decoding, fm.outputs, anchors)
    fspecs = input_specs(fm, opts)
    calib, valid, data = _open_data(opts, p, fm, fspecs)
    fbuild = cal.InputBuilder(fspecs, data.frame_order, data.description)
    vbuild = cal.InputBuilder(fspecs, valid.dataset.frame_order, valid.dataset.description)
    say(f"reading calibration data: {len(calib)} samples from {data.description}")
    fingerprint, n_calib = cal.fingerprint_and_count(fbuild.over(calib))
    say(f"reading held-back data: {len(valid)} samples from {valid.dataset.description}")
    cal.fingerprint_and_count(vbuild.over(valid))
    return Context(opts, p, work, say, fm, fspecs, calib, valid, data, fbuild, vbuild, fingerprint, n_calib)


def decide_outputs(ctx: Context, float_run: Callable[[list[np.ndarray]], list[np.ndarray]]) -> Outputs:
    """Which output holds class scores (if any) and whether they still need a softmax."""
    from converters import packager

    class_idx = packager.class_output(ctx.fm.outputs, ctx.opts.task, ctx.opts.decoding, ctx.plan.labels)
    if class_idx is None:
        return Outputs(None, "none")
    classes = ctx.fm.outputs[class_idx].shape[-1]
    labels = ctx.plan.labels
    if labels is not None and classes > 0 and len(labels) != classes:
        raise ConversionError(f"{len(labels)} labels given but the model scores {classes} classes: fix --labels")
    sample = [float_run(b)[class_idx] for b in itertools.islice(ctx.calibration(), 8)]
    return Outputs(class_idx, packager.score_activation(sample))
