"""Real photographs (scikit-image) cut into frames, a manifest with reference stats built by the converter's code."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from converters.refstats import RefStatsBuilder
from edge_runtime.package.manifest import Manifest
from edge_runtime.pipeline import FrameResult
from edge_runtime.results import ClassScore, Prediction, Timings
from tests.package.helpers import manifest_fields

_PHOTOS: list[np.ndarray] = []


def photos() -> list[np.ndarray]:
    if not _PHOTOS:
        from skimage import data

        for name in ("astronaut", "coffee", "chelsea", "rocket", "coffee", "immunohistochemistry"):
            img = getattr(data, name)()
            _PHOTOS.append(np.ascontiguousarray(img[:, :, ::-1]))  # RGB -> BGR, as a camera gives
    return _PHOTOS


def frames(n: int, seed: int, size: int = 96, gain: float = 1.0, offset: float = 0.0) -> Iterator[np.ndarray]:
    """Random crops of the photos (BGR uint8); gain/offset brighten them to simulate a changed scene."""
    rng = np.random.default_rng(seed)
    imgs = photos()
    for _ in range(n):
        img = imgs[rng.integers(len(imgs))]
        y, x = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        crop = img[y:y + size, x:x + size].astype(np.float32) * gain + offset
        yield np.clip(crop, 0, 255).astype(np.uint8)


def manifest_with_reference(n: int = 300, seed: int = 0, size: int = 96) -> Manifest:
    fields = manifest_fields()
    fields["inputs"][0]["shape"] = [1, size, size, 3]
    fields["golden"] = None
    fields["files"] = [{"path": "model.onnx", "sha256": "0" * 64, "size": 1}]
    spec = Manifest.model_validate(fields).inputs[0]
    b = RefStatsBuilder(spec, "BGR", None, "none")
    for f in frames(n, seed, size=size):
        b.add_input(f)
    fields["reference"] = b.result(None).model_dump()
    return Manifest.model_validate(fields)


def frame_result(i: int, frame: np.ndarray | None, confidence: float = 0.9, top: int = 0,
                 fps: float = 1.0) -> FrameResult:
    """Frame ``i`` of a stream at ``fps`` (its capture time is i / fps after a fixed start)."""
    p = Prediction(task="classification", classes=(ClassScore(top, confidence, None),),
                   timings=Timings(1.0 + (i % 7) * 0.1, 5.0 + (i % 11) * 0.2, 0.3), model="unit", version="1.0.0")
    return FrameResult(index=i, timestamp=1.8e9 + i / fps, prediction=p, frame=frame, capture_wait_ms=0.5,
                       end_to_end_ms=7.0 + (i % 13) * 0.3)
