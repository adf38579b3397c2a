"""The BlazeFace demo model: anchors, decoding on real photos, and the int8 demo package built by the converter.

The expected face comes from an independent detector (scikit-image's LBP frontal-face cascade), not from
BlazeFace itself. Tolerances: int8 face score within 0.05 of float, box IoU with the float box >= 0.8.
"""

from __future__ import annotations

import numpy as np
import pytest

from converters.zoo import blazeface
from edge_runtime.package.signing import TrustStore, generate_keypair
from edge_runtime.package.store import load_package
from edge_runtime.postprocess.ssd import detect_ssd
from edge_runtime.preprocess import ImagePreprocessor
from edge_runtime.results import Detection


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return dict(blazeface.demo_photos(("astronaut", "coffee")))


@pytest.fixture(scope="module")
def cascade_face(photos: dict[str, np.ndarray]) -> tuple[float, float, float, float]:
    """The astronaut's face found by scikit-image's LBP cascade (x1, y1, x2, y2)."""
    import skimage.color
    import skimage.data
    from skimage.feature import Cascade

    cascade = Cascade(skimage.data.lbp_frontal_face_cascade_filename())
    found = cascade.detect_multi_scale(
        img=skimage.color.rgb2gray(photos["astronaut"]), scale_factor=1.2, step_ratio=1,
        min_size=(60, 60), max_size=(300, 300),
    )  # fmt: skip
    assert len(found) == 1
    f = found[0]
    return float(f["c"]), float(f["r"]), float(f["c"] + f["width"]), float(f["r"] + f["height"])


def _float_detect(frame: np.ndarray) -> tuple[Detection, ...]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(blazeface.model_path()))
    interp.allocate_tensors()
    x, transform = ImagePreprocessor(blazeface.input_spec(), "RGB")(frame)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    out = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
    return detect_ssd(
        out["regressors"],
        out["classificators"],
        blazeface.anchors(),
        blazeface.decoding(),
        (128, 128),
        transform,
        ("face",),
    )


def test_anchors_follow_the_short_range_layout():
    a = blazeface.anchors()
    assert a.shape == (896, 4) and a.dtype == np.float32
    # 16x16 cells (stride 8) with 2 anchors each, then 8x8 cells (three stride-16 layers) with 6 each
    first, rest = a[:512].reshape(16, 16, 2, 4), a[512:].reshape(8, 8, 6, 4)
    np.testing.assert_allclose(first[3, 5, 1, :2], [(5 + 0.5) / 16, (3 + 0.5) / 16])
    np.testing.assert_allclose(rest[7, 2, 5, :2], [(2 + 0.5) / 8, (7 + 0.5) / 8])
    assert np.all(a[:, 2:] == 1.0)  # fixed anchor size
    # without a fixed size the first anchors take MediaPipe's scales: min_scale, then sqrt(min * next)
    sized = blazeface.ssd_anchors(**{**blazeface.SHORT_RANGE_ANCHORS, "fixed_anchor_size": False})
    nxt = 0.1484375 + (0.75 - 0.1484375) / 3
    np.testing.assert_allclose(sized[0, 2:], [0.1484375] * 2, rtol=1e-6)
    np.testing.assert_allclose(sized[1, 2:], [np.sqrt(0.1484375 * nxt)] * 2, rtol=1e-6)
    assert np.load(__import__("io").BytesIO(blazeface.anchors_npy())).shape == (896, 4)


def test_float_model_finds_the_astronauts_face(photos: dict[str, np.ndarray], cascade_face: tuple[float, ...]):
    dets = _float_detect(photos["astronaut"])
    assert len(dets) == 1
    assert 0.85 < dets[0].score < 0.99
    assert _iou(dets[0].box, cascade_face) > 0.6
    assert len(dets[0].keypoints) == 6
    # the eyes lie inside the face box, above the mouth
    (rx, ry), (lx, ly), _, (mx, my) = dets[0].keypoints[:4]
    x1, y1, x2, y2 = dets[0].box
    assert x1 < rx < x2 and x1 < lx < x2 and y1 < ry < my < y2
    assert _float_detect(photos["coffee"]) == ()


@pytest.fixture(scope="module", params=["tflite", "onnx"])
def demo_package(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp(f"demo-{request.param}")
    private, public = generate_keypair(root / "keys" / "demo")
    pkg = blazeface.build_demo_package(root / "pkg", sign_key=private, fmt=request.param, progress=lambda _: None)
    return pkg, public


@pytest.mark.slow
def test_demo_package_is_int8_signed_and_detects_like_float(demo_package, photos: dict[str, np.ndarray]):  # noqa: ANN001
    from edge_runtime.api import load
    from edge_runtime.golden import smoke_test

    pkg, public = demo_package
    m = load_package(pkg.root, TrustStore.from_paths([public])).manifest
    assert m.quantization.precision == "int8" and m.quantization.calibration_samples >= 20
    assert m.outputs.decoding.type == "ssd" and m.outputs.labels == ("face",)
    assert "anchors.npy" in [f.path for f in m.files]
    # x86-laptop asks for integer I/O: int8 from LiteRT, uint8 (onnxruntime's u8 activations) from ONNX
    io_type = "int8" if m.format == "tflite" else "uint8"
    assert m.inputs[0].dtype == io_type and m.inputs[0].quantization is not None
    assert [t.dtype for t in m.outputs.tensors] == [io_type, io_type]
    steps = [t.quantization.scale[0] for t in m.outputs.tensors]
    assert m.golden.atol_per_output == pytest.approx([1.5 * s for s in steps])  # stated: 1.5 steps each
    # box offsets (input pixels) and score logits get tolerances of their own, not the boxes' for both
    atol = dict(zip([t.name for t in m.outputs.tensors], m.golden.atol_per_output, strict=True))
    assert atol["classificators"] < atol["regressors"] and m.golden.atol == max(atol.values())
    float_face = _float_detect(photos["astronaut"])[0]
    with load(pkg.root, trust=TrustStore.from_paths([public])) as model:
        assert smoke_test(model).passed  # the golden pairs replay within their per-output tolerances
        faces = model.predict(photos["astronaut"], frame_order="RGB").detections
        assert model.predict(photos["coffee"], frame_order="RGB").detections == ()
    assert len(faces) == 1 and faces[0].label == "face"
    assert abs(faces[0].score - float_face.score) < 0.05, (faces[0].score, float_face.score)
    assert _iou(faces[0].box, float_face.box) >= 0.8


@pytest.mark.slow
def test_cli_converts_blazeface_with_a_decoding_file_and_anchors(tmp_path, photos: dict[str, np.ndarray]):  # noqa: ANN001
    """Given BlazeFace's float TFLite, a YAML decoding, anchors.npy and a folder of photos, when converted with
    `edge-runtime convert --task detection`, then the package finds the astronaut's face like the float model."""
    import yaml

    from edge_runtime.api import load
    from edge_runtime.cli import main

    decoding = blazeface.decoding().model_dump(mode="json", exclude={"anchors_file"})
    (tmp_path / "blazeface.yaml").write_text(yaml.safe_dump(decoding))
    np.save(tmp_path / "anchors.npy", blazeface.anchors())
    (tmp_path / "labels.txt").write_text("face\n")
    calib = blazeface.write_calibration_folder(tmp_path / "photos")
    out = tmp_path / "pkg"
    rc = main(["convert", str(blazeface.model_path()), "--profile", "x86-laptop", "--calibration", str(calib),
               "--out", str(out), "--task", "detection", "--decoding", str(tmp_path / "blazeface.yaml"),
               "--anchors", str(tmp_path / "anchors.npy"), "--labels", str(tmp_path / "labels.txt"),
               "--resize", "letterbox", "--pad-value", "0", "--mean", "127.5", "--std", "127.5",
               "--color-order", "RGB", "-q"])  # fmt: skip
    assert rc == 0
    m = load_package(out, allow_unsigned=True).manifest
    assert m.format == "onnx" and m.outputs.decoding == blazeface.decoding()
    assert m.inputs[0].pad_value == 0 and m.inputs[0].dtype == "uint8"  # integer input for x86-laptop
    assert np.array_equal(np.load(out / "anchors.npy"), blazeface.anchors())
    float_face = _float_detect(photos["astronaut"])[0]
    with load(out, allow_unsigned=True) as model:
        faces = model.predict(photos["astronaut"], frame_order="RGB").detections
        assert model.predict(photos["coffee"], frame_order="RGB").detections == ()
    assert len(faces) == 1 and faces[0].label == "face"
    assert abs(faces[0].score - float_face.score) < 0.05 and _iou(faces[0].box, float_face.box) >= 0.8


@pytest.mark.slow
def test_int8_face_scores_keep_their_resolution(demo_package):  # noqa: ANN001
    """Issue 12: the score head is calibrated to logits -10..10 (converters.scores), so int8 scores between 0.5
    and 0.999 can take 89 values (12 before, with the logits' own range -140..+10), and do vary over frames."""
    from converters.scores import MIN_DISTINCT, distinct_high_scores, score_levels
    from converters.zoo.brought import score_logits
    from edge_runtime.api import load

    pkg, public = demo_package
    m = load_package(pkg.root, TrustStore.from_paths([public])).manifest
    scores = next(t for t in m.outputs.tensors if t.name == "classificators")
    q = scores.quantization
    assert score_levels(q.scale[0], q.zero_point[0], scores.dtype) >= 2 * MIN_DISTINCT
    with load(pkg.root, trust=TrustStore.from_paths([public])) as model:
        logits = np.concatenate([score_logits(model, rgb) for _, rgb in blazeface.calibration_frames()])
    assert distinct_high_scores(logits) >= MIN_DISTINCT // 2  # observed over the 36 demo frames (two faces)
