"""Post-processing driven by the manifest's OutputSpec: model outputs -> classes, detections or raw arrays.

``build_postprocessor(manifest, root)`` resolves everything once (output indexes, quantization, anchors) and
returns a plain callable, so a prediction only runs the decode itself. int8/uint8 outputs are dequantized with
their TensorSpec quantization before any decode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edge_runtime.errors import PackageError
from edge_runtime.package.manifest import (
    ClassificationDecoding,
    Manifest,
    SsdDecoding,
    TensorSpec,
    YoloDecoding,
)
from edge_runtime.postprocess.classify import classify
from edge_runtime.postprocess.raw import raw_outputs
from edge_runtime.postprocess.ssd import detect_ssd
from edge_runtime.postprocess.yolo import detect_yolo
from edge_runtime.preprocess import Transform
from edge_runtime.quant import dequantize
from edge_runtime.results import ClassScore, Detection

__all__ = ["Decoded", "Postprocessor", "build_postprocessor", "output_index"]


class Decoded(NamedTuple):
    """What post-processing produced for one prediction."""

    classes: tuple[ClassScore, ...] = ()
    detections: tuple[Detection, ...] = ()
    raw: dict[str, np.ndarray] = {}  # a shared default, never mutated


Postprocessor = Callable[[Sequence[np.ndarray], Transform | None], Decoded]


def output_index(specs: Sequence[TensorSpec], name: str) -> int:
    """Position of output ``name`` among the manifest's outputs."""
    for i, s in enumerate(specs):
        if s.name == name:
            return i
    raise PackageError(f"decoding names output {name!r}, which the manifest does not list")


def _load_anchors(manifest: Manifest, dec: SsdDecoding, root: Path | None) -> np.ndarray:
    if root is None:
        raise PackageError("SSD decoding needs the package directory to read its anchors")
    try:
        anchors = np.load(root / dec.anchors_file, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise PackageError(f"cannot read anchors {dec.anchors_file}: {exc}") from exc
    if anchors.ndim != 2 or anchors.shape[1] != 4:
        raise PackageError(f"anchors {dec.anchors_file} must be [N, 4] (cx, cy, w, h), got {list(anchors.shape)}")
    return anchors


def _image_hw(manifest: Manifest) -> tuple[int, int]:
    for spec in manifest.inputs:
        if spec.kind == "image":
            h, w, _ = spec.height_width_channels
            return h, w
    raise PackageError("detection decoding needs an image input")


def build_postprocessor(manifest: Manifest, root: Path | None = None) -> Postprocessor:
    """The callable for this manifest: (outputs in manifest order, preprocess Transform or None) -> Decoded."""
    out = manifest.outputs
    specs, labels, dec = out.tensors, out.labels, out.decoding
    if isinstance(dec, ClassificationDecoding):
        i, q = output_index(specs, dec.output), specs[output_index(specs, dec.output)].quantization

        def _classify(outputs: Sequence[np.ndarray], _t: Transform | None) -> Decoded:
            return Decoded(classes=classify(dequantize(outputs[i], q), dec.activation, dec.top_k, labels))

        return _classify
    if isinstance(dec, SsdDecoding):
        bi, si = output_index(specs, dec.boxes_output), output_index(specs, dec.scores_output)
        bq, sq = specs[bi].quantization, specs[si].quantization
        anchors, hw = _load_anchors(manifest, dec, root), _image_hw(manifest)

        def _ssd(outputs: Sequence[np.ndarray], t: Transform | None) -> Decoded:
            boxes, scores = dequantize(outputs[bi], bq), dequantize(outputs[si], sq)
            return Decoded(detections=detect_ssd(boxes, scores, anchors, dec, hw, t, labels))

        return _ssd
    if isinstance(dec, YoloDecoding):
        yi = output_index(specs, dec.output)
        yq = specs[yi].quantization

        def _yolo(outputs: Sequence[np.ndarray], t: Transform | None) -> Decoded:
            return Decoded(detections=detect_yolo(dequantize(outputs[yi], yq), dec, t, labels))

        return _yolo

    def _raw(outputs: Sequence[np.ndarray], _t: Transform | None) -> Decoded:
        return Decoded(raw=raw_outputs(outputs, specs))

    return _raw
