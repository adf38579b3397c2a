"""Calibration and validation data as iterators: an image folder, a video file, or .npy/.npz arrays.

Samples stay raw (8-bit frames or arrays) until they are fed through edge_runtime.preprocess, the same code the
device runs, so calibration sees exactly the tensors the device will produce. Nothing holds the whole set in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from edge_runtime.errors import CalibrationError, InputError
from edge_runtime.package.manifest import InputSpec
from edge_runtime.preprocess import FrameOrder, ImagePreprocessor, TensorPreprocessor
from edge_runtime.quant import quantize

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}
Part = Literal["all", "calibration", "validation"]


class Dataset:
    """Raw samples produced one at a time. ``frame_order`` is the channel order of 8-bit frames."""

    description: str = "data"
    frame_order: FrameOrder = "BGR"
    labels: Sequence[str | None] | None = None  # one class (name or index) per sample, when the data has them

    def __len__(self) -> int:
        raise NotImplementedError

    def samples(self) -> Iterator[np.ndarray]:
        raise NotImplementedError


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFolder(Dataset):
    """Every image file in a folder (sorted), or in its class subfolders (then labelled by folder name), read
    with OpenCV as BGR frames; ``labels.json`` or ``labels.csv`` beside flat images label them too."""

    def __init__(self, path: Path) -> None:
        from converters.labels import folder_labels

        self.description = str(path)
        self.files = _images(path)
        if not self.files:
            subs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
            self.files = [f for d in subs for f in _images(d)]
        if not self.files:
            raise CalibrationError(
                f"{path} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))}), in it or in class subfolders"
            )
        self.labels = folder_labels(path, self.files)

    def __len__(self) -> int:
        return len(self.files)

    def samples(self) -> Iterator[np.ndarray]:
        for f in self.files:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise CalibrationError(f"cannot read image {f} (corrupt or not an image)")
            yield img


class VideoFrames(Dataset):
    """``count`` frames sampled evenly from a video file (BGR, as OpenCV decodes them)."""

    def __init__(self, path: Path, count: int) -> None:
        self.description, self.path = str(path), path
        cap = cv2.VideoCapture(str(path))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        cap.release()
        if total <= 0:
            raise CalibrationError(f"cannot read video {path} (no frames, or not a video OpenCV can decode)")
        self.total = total
        picks = np.unique(np.linspace(0, total - 1, num=min(count, total)).round().astype(int))
        self.picks = [int(i) for i in picks]

    def __len__(self) -> int:
        return len(self.picks)

    def samples(self) -> Iterator[np.ndarray]:
        cap = cv2.VideoCapture(str(self.path))
        try:
            wanted, index, got = iter(self.picks), 0, 0
            target = next(wanted, None)
            while target is not None:
                if not cap.grab():
                    break
                if index == target:
                    ok, frame = cap.retrieve()
                    if ok:
                        got += 1
                        yield frame
                    target = next(wanted, None)
                index += 1
            if got == 0:
                raise CalibrationError(f"cannot decode any frame of video {self.path}")
        finally:
            cap.release()


class ArrayFile(Dataset):
    """Samples along the first axis of a .npy array (memory-mapped) or of an .npz array.

    An .npz holds one array, or one per model input named after the input (then samples are dicts).
    8-bit image arrays are taken as RGB frames (the numpy/PIL convention).
    """

    frame_order: FrameOrder = "RGB"

    def __init__(self, path: Path, input_names: Sequence[str]) -> None:
        self.description, self.path, self.names = str(path), path, list(input_names)
        try:
            if path.suffix.lower() == ".npy":
                self.arrays = {self.names[0]: np.load(path, mmap_mode="r", allow_pickle=False)}
            else:
                self._npz = np.load(path, allow_pickle=False)
                keys = [k for k in self._npz.files if k != "labels"]
                if "labels" in self._npz.files:
                    self.labels = [str(v) for v in np.asarray(self._npz["labels"]).ravel().tolist()]
                if len(keys) == 1:
                    self.arrays = {self.names[0]: self._npz[keys[0]]}
                elif set(self.names) <= set(keys):
                    self.arrays = {n: self._npz[n] for n in self.names}
                else:
                    raise CalibrationError(
                        f"{path} holds arrays {keys}: expected one array or one per input {self.names}"
                    )
        except (OSError, ValueError, EOFError) as exc:
            raise CalibrationError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
        sizes = {a.shape[0] if a.ndim else 0 for a in self.arrays.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise CalibrationError(f"{path} is empty or its arrays have different sample counts ({sorted(sizes)})")
        self.count = sizes.pop()
        if self.labels is not None and len(self.labels) != self.count:
            raise CalibrationError(f"{path}: {len(self.labels)} labels for {self.count} samples")
        if len(self.arrays) == 1 and self.names[0] in self.arrays:
            first = self.arrays[self.names[0]]
            if first.ndim == 3 and first.dtype == np.uint8:
                self.frame_order = "GRAY"

    def __len__(self) -> int:
        return self.count

    def samples(self) -> Iterator[np.ndarray]:
        if len(self.arrays) == 1:
            (arr,) = self.arrays.values()
            for i in range(self.count):
                yield np.asarray(arr[i])
            return
        for i in range(self.count):
            yield {n: np.asarray(a[i]) for n, a in self.arrays.items()}  # type: ignore[misc]


class InMemory(Dataset):
    """Samples the caller already holds (the Python API: e.g. demo photos with flips and crops)."""

    def __init__(self, samples: Sequence[np.ndarray], frame_order: FrameOrder = "RGB", description: str = "arrays"):
        if len(samples) == 0:
            raise CalibrationError(f"{description}: no samples")
        self._samples, self.frame_order, self.description = samples, frame_order, description

    def __len__(self) -> int:
        return len(self._samples)

    def samples(self) -> Iterator[np.ndarray]:
        yield from self._samples


def open_dataset(path: Path, input_names: Sequence[str], max_frames: int) -> Dataset:
    """A folder of images, a video file, or an .npy/.npz file."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration/validation data {path} does not exist")
    if path.is_dir():
        return ImageFolder(path)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        return ArrayFile(path, input_names)
    if suffix in VIDEO_SUFFIXES:
        return VideoFrames(path, max_frames)
    raise CalibrationError(
        f"{path}: expected an image folder, a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or .npy/.npz"
    )


@dataclass(frozen=True)
class Subset:
    """A deterministic part of a dataset: every sample, the calibration share, or the held-back share."""

    dataset: Dataset
    part: Part = "all"
    limit: int | None = None
    holdout: float = 0.2

    def _held_back(self, i: int, n: int) -> bool:
        k = max(1, round(n * self.holdout))  # k held-back samples spread evenly over n
        return (i * k) // n != ((i + 1) * k) // n

    def __len__(self) -> int:
        n = len(self.dataset)
        count = n if self.part == "all" else sum(self._keep(i, n) for i in range(n))
        return min(count, self.limit) if self.limit is not None else count

    def _keep(self, i: int, n: int) -> bool:
        if self.part == "all":
            return True
        return self._held_back(i, n) == (self.part == "validation")

    def labels(self) -> list[str | None] | None:
        """The labels of this subset's samples, in order (None when the data set has none)."""
        raw = self.dataset.labels
        if raw is None:
            return None
        n = len(self.dataset)
        kept = [raw[i] for i in range(n) if self._keep(i, n)]
        return kept[: self.limit] if self.limit is not None else kept

    def __iter__(self) -> Iterator[np.ndarray]:
        n, taken = len(self.dataset), 0
        for i, sample in enumerate(self.dataset.samples()):
            if self.limit is not None and taken >= self.limit:
                return
            if self._keep(i, n):
                taken += 1
                yield sample


class InputBuilder:
    """Raw sample -> the list of model inputs (batch 1), through the device's own preprocessing."""

    def __init__(self, specs: Sequence[InputSpec], frame_order: FrameOrder, source: str) -> None:
        self.specs, self.source, self.frame_order = list(specs), source, frame_order
        self._fns: list[Callable[[np.ndarray], np.ndarray]] = []
        for spec in self.specs:
            if spec.kind == "image":
                pre = ImagePreprocessor(spec, frame_order)
                self._fns.append(lambda x, pre=pre: pre(x)[0])
            else:
                self._fns.append(TensorPreprocessor(spec))

    def __call__(self, sample: np.ndarray | dict[str, np.ndarray], index: int = 0) -> list[np.ndarray]:
        out = []
        for spec, fn in zip(self.specs, self._fns, strict=True):
            x = sample[spec.name] if isinstance(sample, dict) else sample
            if spec.kind == "image" and x.dtype != np.uint8:
                out.append(self._image_tensor(spec, x, index))
                continue
            try:
                out.append(fn(x))
            except InputError as exc:
                raise CalibrationError(f"{self.source} sample {index}: {exc}") from exc
        return out

    def _image_tensor(self, spec: InputSpec, x: np.ndarray, index: int) -> np.ndarray:
        """A float array of the image input's own shape: an already preprocessed tensor (onnxruntime's examples
        calibrate with these), used as given; the device still gets frames through the spec's preprocessing."""
        shape = tuple(spec.shape)
        if x.dtype.kind != "f" or x.shape not in (shape, shape[1:]):
            raise CalibrationError(
                f"{self.source} sample {index}: image input {spec.name!r} takes 8-bit frames (uint8, H x W or "
                f"H x W x C, e.g. an image folder or video) or float tensors of its shape {list(shape)}, already "
                f"normalised; got {x.dtype} arrays of shape {list(x.shape)}"
            )
        t = np.ascontiguousarray(x, dtype=np.float32).reshape(shape)
        if spec.dtype in ("int8", "uint8"):
            assert spec.quantization is not None
            return quantize(t, spec.quantization, np.dtype(spec.dtype))
        return t

    def over(self, subset: Subset) -> Iterator[list[np.ndarray]]:
        for i, sample in enumerate(subset):
            yield self(sample, i)


def fingerprint_and_count(batches: Iterator[list[np.ndarray]]) -> tuple[str, int]:
    """SHA-256 over the model-input tensors (dtype, shape and bytes), and the number of samples."""
    h, n = hashlib.sha256(), 0
    for batch in batches:
        for t in batch:
            h.update(f"{t.dtype.str}{t.shape}".encode())
            h.update(np.ascontiguousarray(t).tobytes())
        n += 1
    if n == 0:
        raise CalibrationError("calibration data produced no samples")
    return h.hexdigest(), n
