"""Calibration data: video frames, image folders and arrays go through the device's preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from converters import calibration as cal
from converters.pipeline import ConvertOptions, convert
from edge_runtime.errors import CalibrationError
from edge_runtime.package.manifest import InputSpec
from edge_runtime.preprocess import ImagePreprocessor

SPEC = InputSpec(name="image", shape=(1, 1, 16, 16), dtype="float32", kind="image", layout="NCHW", color_order="GRAY")


def test_video_frames_sampled_evenly_and_preprocessed_like_the_device(data_dir, digits):
    video = cal.VideoFrames(data_dir / "digits.avi", count=12)
    assert len(video) == 12 and video.picks[0] == 0 and video.picks[-1] == 59
    build = cal.InputBuilder([SPEC], video.frame_order, video.description)
    frames = list(video.samples())
    assert len(frames) == 12 and frames[0].shape == (64, 64, 3)
    x = build(frames[0])[0]
    assert x.shape == (1, 1, 16, 16) and x.dtype == np.float32
    assert np.array_equal(x, ImagePreprocessor(SPEC, "BGR")(frames[0])[0])  # the same code, the same tensor
    # decoded (lossy MJPG) frame 0 is still the digit it was made from
    assert np.abs(x[0, 0] * 255 - digits.frames[1300]).mean() < 12


def test_holdout_split_is_disjoint_deterministic_and_bounded(data_dir):
    data = cal.ArrayFile(data_dir / "features_calib.npy", ["X"])
    calib = cal.Subset(data, "calibration", None, 0.2)
    valid = cal.Subset(data, "validation", None, 0.2)
    assert len(calib) + len(valid) == len(data) == 160 and len(valid) == 32
    c = {s.tobytes() for s in calib}
    v = {s.tobytes() for s in valid}
    assert not (c & v)
    assert len(cal.Subset(data, "calibration", 10, 0.2)) == 10 == sum(1 for _ in cal.Subset(data, "calibration", 10))


def test_fingerprint_depends_on_the_data_only(data_dir):
    a = cal.ArrayFile(data_dir / "features_calib.npy", ["X"])
    spec = InputSpec(
        name="X", shape=(1, 64), dtype="float32", kind="tensor", normalization={"mean": (0.0,), "std": (1.0,)}
    )
    build = cal.InputBuilder([spec], "RGB", "x")
    f1, n1 = cal.fingerprint_and_count(build.over(cal.Subset(a)))
    f2, _ = cal.fingerprint_and_count(build.over(cal.Subset(a)))
    f3, _ = cal.fingerprint_and_count(build.over(cal.Subset(a, limit=100)))
    assert f1 == f2 != f3 and n1 == 160


def test_video_calibration_end_to_end(onnx_cnn, data_dir, tmp_path):
    """Given a video, when converting with it, then frames are sampled, recorded, and int8 still agrees."""
    opts = ConvertOptions(source=onnx_cnn, profile="x86-laptop", calibration=data_dir / "digits.avi",
                          out=tmp_path / "pkg", max_samples=24, calibration_method="percentile")  # fmt: skip
    m = convert(opts, progress=lambda s: None).manifest
    q = m.quantization
    assert q.calibration_samples == 24 and q.calibration_method == "percentile" and len(q.calibration_fingerprint) == 64
    assert m.accuracy.samples == 6 and m.accuracy.top1_agreement >= 0.8


def test_npz_gray_frames_and_wrong_channels(data_dir, tmp_path):
    frames = np.load(data_dir / "frames_calib.npy")
    np.savez(tmp_path / "f.npz", frames=frames)
    ds = cal.ArrayFile(tmp_path / "f.npz", ["image"])
    assert ds.frame_order == "GRAY" and len(ds) == 80
    x = cal.InputBuilder([SPEC], ds.frame_order, "f.npz")(next(ds.samples()))[0]
    assert np.allclose(x[0, 0] * 255, frames[0], atol=1e-3)
    np.savez(tmp_path / "two.npz", a=frames, b=frames)
    with pytest.raises(CalibrationError, match="expected one array or one per input"):
        cal.ArrayFile(tmp_path / "two.npz", ["image"])
