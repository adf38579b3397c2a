"""The guard decides on evidence: Wilson bounds, margin-weighted flips, labels when the data has them."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from converters import evidence as ev
from converters import guard
from converters.calibration import ImageFolder, Subset
from converters.labels import class_indices
from edge_runtime.cli import main
from edge_runtime.errors import ConversionError
from edge_runtime.package.manifest import Manifest

BUDGET = {"min_top1_agreement": 0.98, "min_cosine": 0.98}


def test_wilson_interval_matches_the_published_formula():
    lo, hi = ev.wilson(19, 20)  # Wilson 95 % for 19/20: 0.7639..0.9911
    assert lo == pytest.approx(0.7639, abs=1e-4) and hi == pytest.approx(0.9911, abs=1e-4)
    assert ev.wilson(0, 10)[0] == 0.0 and ev.wilson(10, 10)[1] == pytest.approx(1.0)


def _pair(f: list[float], q: list[float]):
    return [np.array([f], np.float32)], [np.array([q], np.float32)]


def test_one_low_margin_flip_at_high_cosine_is_undecided_and_accepted():
    """Given 20 held-back samples that agree but one, a flip between two near-equal classes, when judged,
    then the guard does not refuse: it says it cannot decide and how many samples would."""
    same = [_pair([0.9, 0.05, 0.05], [0.9, 0.05, 0.05])] * 19
    flip = [_pair([0.46, 0.44, 0.10], [0.44, 0.46, 0.10])]
    ag = guard.measure(iter(same + flip), class_output=0)
    assert ag.top1 == 0.95 and ag.flips == 1 and ag.weighted_flips == pytest.approx(0.1)
    v = guard.verdict(ag, BUDGET)
    assert v.decision == "undecided" and guard.passes(ag, BUDGET)
    assert "too few samples to decide: need" in v.reason and v.needed is not None and v.needed > 20


def test_confident_flips_fail_and_low_cosine_fails_even_when_undecided():
    same = [_pair([0.9, 0.05, 0.05], [0.9, 0.05, 0.05])] * 80
    flips = [_pair([0.9, 0.05, 0.05], [0.05, 0.9, 0.05])] * 20
    assert guard.verdict(guard.measure(iter(same + flips), 0), BUDGET).decision == "fail"
    # strong output agreement never refuses on agreement alone (here: flips of a tiny-margin class, big vector)
    noisy = [_pair([0.5, 0.1, 0.1], [0.1, 0.5, 0.1])]
    ag = guard.measure(iter(noisy), 0)
    assert guard.verdict(ag, BUDGET).decision == "fail"  # undecided on 1 sample, but cosine 0.6 < 0.98


def test_labels_judge_the_accuracy_drop():
    """Given labelled samples, the guard reports both accuracies and decides on the drop."""
    right = [_pair([0.9, 0.1], [0.8, 0.2])] * 30
    ag = guard.measure(iter(right), 0, labels=[0] * 30)
    budget = {**BUDGET, "max_accuracy_drop": 0.01}
    rep = guard.report(ag, budget)
    assert rep.float_accuracy == rep.int8_accuracy == 1.0 and rep.labelled_samples == 30
    assert rep.decision == "undecided" and rep.passed and rep.int8_accuracy_ci[0] < 1.0
    worse = [_pair([0.9, 0.1], [0.1, 0.9])] * 30 + right
    rep = guard.report(guard.measure(iter(worse), 0, labels=[0] * 60), budget)
    assert rep.decision == "fail" and rep.int8_accuracy == 0.5 and "drop 50.0%" in rep.reason


def test_class_folders_and_label_files_label_the_samples(tmp_path, digits):
    for i, (frame, y) in enumerate(zip(digits.frames[:6], digits.y[:6], strict=True)):
        (tmp_path / "cls" / str(y)).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "cls" / str(y) / f"{i}.png"), frame)
        (tmp_path / "flat").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "flat" / f"{i}.png"), frame)
    by_folder = ImageFolder(tmp_path / "cls")
    assert sorted(by_folder.labels) == sorted(str(y) for y in digits.y[:6])
    names = {f"{i}.png": f"d{y}" for i, y in enumerate(digits.y[:6])}
    (tmp_path / "flat" / "labels.json").write_text(json.dumps(names))
    flat = ImageFolder(tmp_path / "flat")
    assert Subset(flat).labels() == [f"d{y}" for y in digits.y[:6]]
    with pytest.raises(ConversionError, match="give --labels FILE"):
        class_indices(flat.labels, None, 10)
    assert class_indices(["d3", "d1"], [f"d{i}" for i in range(10)], 10) == [3, 1]


def test_entropy_calibration_gives_its_own_ranges(onnx_cnn, data_dir, tmp_path):
    """onnxruntime's default entropy settings leave a single KL candidate (the full range); ours do not."""
    from converters.calibration import InputBuilder, open_dataset
    from converters.context import input_specs
    from converters.options import ConvertOptions
    from converters.sources import load_source
    from converters.targets import onnx_int8
    from edge_runtime.profiles import load_profile

    opts = ConvertOptions(source=onnx_cnn, profile="x86-laptop", calibration=data_dir / "calib", out=tmp_path / "o")
    fm = load_source(onnx_cnn, tmp_path)
    specs = input_specs(fm, opts)
    data = Subset(open_dataset(data_dir / "calib", ["image"], 80))
    build = InputBuilder(specs, data.dataset.frame_order, "calib")
    prepared = onnx_int8.preprocess(fm.onnx_path, tmp_path / "prep.onnx")
    scales = {}
    for method in ("minmax", "entropy"):
        qm = onnx_int8.quantize_onnx(prepared, lambda: build.over(data), load_profile("x86-laptop"),
                                     tmp_path / f"{method}.onnx", method)  # fmt: skip
        inits = onnx.load(str(qm.path)).graph.initializer
        scales[method] = {i.name: float(numpy_helper.to_array(i).ravel()[0]) for i in inits if "_scale" in i.name}
    differ = [k for k in scales["minmax"] if abs(scales["minmax"][k] - scales["entropy"].get(k, 0)) > 1e-6]
    assert differ, "entropy calibration produced exactly the minmax ranges"


def test_labelled_validation_folder_reports_accuracy_in_the_manifest(onnx_cnn, digits, tmp_path, capsys):
    """Given calibration as preprocessed float tensors of the image input's shape and validation images in a
    folder per class, when converting from the CLI, then the package still takes frames, and the manifest carries
    float and int8 accuracy with intervals and the guard's decision, and stderr the remedy table."""
    valid = tmp_path / "valid"
    for i in range(1400, 1460):
        (valid / str(digits.y[i])).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(valid / str(digits.y[i]) / f"{i}.png"), digits.frames[i])
    tensors = tmp_path / "calib.npy"
    np.save(tensors, (digits.frames[1200:1280, None, None] / 255.0).astype(np.float32))  # [N, 1, 1, 16, 16]
    out = tmp_path / "pkg"
    rc = main(["convert", str(onnx_cnn), "--profile", "x86-laptop", "--calibration", str(tensors),
               "--validation", str(valid), "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0, err
    m = Manifest.model_validate_json((out / "manifest.json").read_text())
    assert m.inputs[0].kind == "image" and m.reference.channel_mean[0] > 5  # drift baseline in pixel units
    acc = m.accuracy
    assert acc.labelled_samples == 60 and acc.float_accuracy > 0.8 and acc.int8_accuracy > 0.8
    assert acc.float_accuracy_ci[0] < acc.float_accuracy < acc.float_accuracy_ci[1]
    assert acc.decision in ("pass", "undecided") and "labelled samples" in acc.reason
    assert "guard | remedy" in err and "held-back data: 60 of 60 samples labelled" in err
