"""The embedding API: load a model package and predict on frames or arrays, getting typed results.

Example::

    from edge_runtime.api import load

    with load("tiny.erpkg", trust=TrustStore.from_paths(["keys/"]), profile="raspberry-pi-4") as model:
        pred = model.predict(frame_bgr)          # uint8 HxWx3 frame (BGR, as OpenCV reads it)
        print(pred.top, pred.timings.total_ms)   # ClassScore(index=.., score=.., label=..), milliseconds

``load`` verifies the Ed25519 signature (by a release key in ``trust``; ``allow_unsigned=True`` skips a missing
one) and every file's hash against the manifest before the model file is opened. ``Model.predict`` runs the
manifest's preprocessing, the backend and the manifest's post-processing; ``prepare`` + ``predict_prepared``
split it so a pipeline can preprocess the next frame while the current one is inferred. ``predict_tensors`` takes
model-ready arrays. Stateful streaming models get their state outputs fed back automatically (``reset_state``
starts a new stream). Predictions are serialised by a lock, so one Model may be shared between threads and
swapped by the updater between two inferences.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from edge_runtime.backends import Backend, BackendOptions, backend_for_format, open_backend
from edge_runtime.errors import BackendError, ConfigError, InputError, PackageError, ProfileError
from edge_runtime.package.manifest import InputSpec, Manifest
from edge_runtime.package.signing import TrustStore
from edge_runtime.package.store import Package, load_package
from edge_runtime.postprocess import build_postprocessor
from edge_runtime.preprocess import FrameOrder, ImagePreprocessor, TensorPreprocessor, Transform
from edge_runtime.profiles import DeviceProfile, load_profile
from edge_runtime.results import Prediction, Timings

log = logging.getLogger(__name__)

BackendName = Literal["tflite", "onnxruntime"]


@dataclass(frozen=True)
class Prepared:
    """Model-ready inputs (state inputs excluded) and the Transform back to frame pixels (None for tensors)."""

    tensors: tuple[np.ndarray, ...]
    transform: Transform | None
    preprocess_ms: float


def _resolve_profile(profile: str | DeviceProfile | None, manifest: Manifest) -> DeviceProfile | None:
    if isinstance(profile, DeviceProfile):
        return profile
    if profile is not None:
        return load_profile(profile)
    try:
        return load_profile(manifest.profile)
    except ProfileError:
        log.info("profile %r of package %s is not known here; using default settings", manifest.profile, manifest.name)
        return None


def backend_options(profile: DeviceProfile | None, backend: str, threads: int | None) -> BackendOptions:
    """Backend settings from the profile (threads, XNNPACK, providers, graph optimisation), threads overridable."""
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    if profile is None:
        return BackendOptions(threads=threads or max(1, os.cpu_count() or 1))
    if backend == "tflite":
        t = profile.backends.tflite
        return BackendOptions(threads=threads or t.threads, xnnpack=t.xnnpack)
    o = profile.backends.onnxruntime
    return BackendOptions(
        threads=threads or o.threads, execution_providers=o.execution_providers, graph_optimization=o.graph_optimization
    )


def _permutation(wanted: Sequence[str], have: Sequence[str], what: str) -> tuple[int, ...] | None:
    """Indexes into ``have`` for each name in ``wanted``; None when the order is already the same."""
    missing = [n for n in wanted if n not in have]
    if missing or len(wanted) != len(have):
        raise PackageError(f"manifest {what} {list(wanted)} do not match the model's {what} {list(have)}")
    perm = tuple(have.index(n) for n in wanted)
    return None if perm == tuple(range(len(perm))) else perm


def _check_specs(manifest: Manifest, backend: Backend) -> None:
    """The manifest's input/output dtypes and static shapes agree with the model file."""
    by_name = {t.name: t for t in (*backend.inputs, *backend.outputs)}
    for spec in (*manifest.inputs, *manifest.outputs.tensors):
        info = by_name[spec.name]
        if np.dtype(spec.dtype) != info.dtype:
            raise PackageError(f"tensor {spec.name!r}: manifest says {spec.dtype}, the model has {info.dtype.name}")
        static = all(d >= 0 for d in (*spec.shape, *info.shape)) and len(spec.shape) == len(info.shape)
        if static and tuple(spec.shape) != info.shape:
            raise PackageError(f"tensor {spec.name!r}: manifest shape {list(spec.shape)} != model {list(info.shape)}")


class Model:
    """A loaded, verified package bound to a backend. Create it with :func:`load`."""

    def __init__(self, package: Package, backend: Backend, profile: DeviceProfile | None) -> None:
        m = package.manifest
        self.package, self.profile, self._backend = package, profile, backend
        self._lock = threading.Lock()
        self._in_perm = _permutation([i.name for i in backend.inputs], [i.name for i in m.inputs], "inputs")
        self._out_perm = _permutation([o.name for o in m.outputs.tensors], [o.name for o in backend.outputs], "outputs")
        _check_specs(m, backend)
        names = [i.name for i in m.inputs]
        out_names = [o.name for o in m.outputs.tensors]
        try:
            self._state = tuple((names.index(b.input), out_names.index(b.output)) for b in m.state)
        except ValueError:
            raise PackageError("a state binding names a tensor the manifest does not list") from None
        state_inputs = {i for i, _ in self._state}
        self._data_idx = tuple(i for i in range(len(m.inputs)) if i not in state_inputs)
        if not self._data_idx:
            raise PackageError("the model has no inputs besides its state")
        self._state_values: dict[int, np.ndarray] = {}
        self.reset_state()
        self._tensor_pre = {i: TensorPreprocessor(m.inputs[i]) for i in self._data_idx if m.inputs[i].kind == "tensor"}
        self._image_pre: dict[tuple[int, str], ImagePreprocessor] = {}
        self._post = build_postprocessor(m, package.root)

    # ---- properties

    @property
    def manifest(self) -> Manifest:
        return self.package.manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def input_spec(self) -> InputSpec:
        """The (first) data input: what ``predict`` feeds."""
        return self.manifest.inputs[self._data_idx[0]]

    @property
    def backend(self) -> str:
        return self._backend.name

    # ---- state

    def reset_state(self) -> None:
        """Start a new stream: every state input goes back to zero (its zero point for quantized state)."""
        for i, _ in self._state:
            spec = self.manifest.inputs[i]
            zero = spec.quantization.zero_point[0] if spec.quantization else 0
            shape = tuple(max(d, 1) for d in spec.shape)
            self._state_values[i] = np.full(shape, zero, dtype=np.dtype(spec.dtype))

    # ---- preprocessing

    def _image(self, idx: int, frame_order: str) -> ImagePreprocessor:
        pre = self._image_pre.get((idx, frame_order))
        if pre is None:
            pre = ImagePreprocessor(self.manifest.inputs[idx], frame_order)  # type: ignore[arg-type]
            self._image_pre[(idx, frame_order)] = pre
        return pre

    def _one(self, idx: int, x: Any, frame_order: str) -> tuple[np.ndarray, Transform | None]:
        if self.manifest.inputs[idx].kind == "image":
            if isinstance(x, np.ndarray) and x.size == 0:
                raise InputError(f"empty frame of shape {x.shape}")
            return self._image(idx, frame_order)(x)
        return self._tensor_pre[idx](x), None

    def prepare(self, x: Any, *, frame_order: FrameOrder = "BGR") -> Prepared:
        """Preprocess one sample (thread-safe, lock-free). Multi-input models take a list or a name -> array map."""
        t0 = time.perf_counter()
        if len(self._data_idx) == 1:
            tensor, transform = self._one(self._data_idx[0], x, frame_order)
            tensors: tuple[np.ndarray, ...] = (tensor,)
        else:
            items = self._split_inputs(x)
            done = [self._one(i, v, frame_order) for i, v in zip(self._data_idx, items, strict=True)]
            tensors = tuple(t for t, _ in done)
            transform = next((tr for _, tr in done if tr is not None), None)
        return Prepared(tensors, transform, (time.perf_counter() - t0) * 1e3)

    def _split_inputs(self, x: Any) -> list[Any]:
        names = [self.manifest.inputs[i].name for i in self._data_idx]
        if isinstance(x, Mapping):
            missing = [n for n in names if n not in x]
            if missing:
                raise InputError(f"missing inputs {missing} (model takes {names})")
            return [x[n] for n in names]
        if not isinstance(x, Sequence) or len(x) != len(names):
            raise InputError(f"model takes {len(names)} inputs {names}: pass a list or a name -> array mapping")
        return list(x)

    # ---- inference

    def _run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        """All inputs in manifest order -> outputs in manifest order (caller holds the lock)."""
        if self._backend is None:
            raise BackendError(f"model {self.name} {self.version} is closed")
        if self._in_perm is not None:
            feeds = [feeds[i] for i in self._in_perm]
        outs = self._backend.run(feeds)
        return outs if self._out_perm is None else [outs[i] for i in self._out_perm]

    def _run_stateful(self, data: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(data) != len(self._data_idx):
            raise InputError(f"model takes {len(self._data_idx)} data inputs, got {len(data)}")
        if not self._state:
            return self._run(list(data))
        feeds: list[np.ndarray] = [None] * len(self.manifest.inputs)  # type: ignore[list-item]
        for i, a in zip(self._data_idx, data, strict=True):
            feeds[i] = a
        for i, _ in self._state:
            feeds[i] = self._state_values[i]
        outs = self._run(feeds)
        for i, o in self._state:
            self._state_values[i] = np.ascontiguousarray(outs[o])
        return outs

    def predict_prepared(self, prepared: Prepared) -> Prediction:
        """Infer and post-process an already prepared sample."""
        with self._lock:
            t0 = time.perf_counter()
            outs = self._run_stateful(prepared.tensors)
            t1 = time.perf_counter()
            decoded = self._post(outs, prepared.transform)
        t2 = time.perf_counter()
        timings = Timings(prepared.preprocess_ms, (t1 - t0) * 1e3, (t2 - t1) * 1e3)
        m = self.manifest
        return Prediction(m.outputs.task, decoded.classes, decoded.detections, decoded.raw, timings, m.name, m.version)

    def batchable(self) -> bool:
        """True when one backend call can take several samples: one data input, no state, and a dynamic first
        (batch) dimension on the model file's input and every output."""
        b = self._backend
        if b is None or self._state or len(self._data_idx) != 1:
            return False
        return all(t.shape and t.shape[0] == -1 for t in (*b.inputs, *b.outputs))

    def predict_batch(self, prepared: Sequence[Prepared]) -> list[Prediction]:
        """Several prepared samples in one backend call (see :meth:`batchable`), post-processed one by one; each
        Prediction's ``inference_ms`` is the whole call's (what each sample waited)."""
        if len(prepared) == 1 or not self.batchable():
            return [self.predict_prepared(p) for p in prepared]
        with self._lock:
            t0 = time.perf_counter()
            outs = self._run([np.concatenate([p.tensors[0] for p in prepared], axis=0)])
            t1 = time.perf_counter()
            decoded = [self._post([o[i : i + 1] for o in outs], p.transform) for i, p in enumerate(prepared)]
        post_ms = (time.perf_counter() - t1) * 1e3 / len(prepared)
        m = self.manifest
        return [Prediction(m.outputs.task, d.classes, d.detections, d.raw,
                           Timings(p.preprocess_ms, (t1 - t0) * 1e3, post_ms), m.name, m.version)
                for p, d in zip(prepared, decoded, strict=True)]  # fmt: skip

    def predict(self, x: Any, *, frame_order: FrameOrder = "BGR") -> Prediction:
        """A uint8 frame (image inputs; HxWxC in ``frame_order``) or an array (tensor inputs) -> Prediction."""
        return self.predict_prepared(self.prepare(x, frame_order=frame_order))

    def predict_tensors(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Model-ready data inputs (model dtypes, batch dimension included) -> raw outputs, manifest order.

        State inputs are not passed: they are fed back automatically, as in ``predict``.
        """
        arrays = [np.ascontiguousarray(a) for a in inputs]
        with self._lock:
            return self._run_stateful(arrays)

    def invoke(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Every model input (state included), manifest order -> raw outputs; state is neither read nor kept."""
        if len(inputs) != len(self.manifest.inputs):
            raise InputError(f"model takes {len(self.manifest.inputs)} inputs, got {len(inputs)}")
        arrays = [np.ascontiguousarray(a) for a in inputs]
        with self._lock:
            return self._run(arrays)

    # ---- lifecycle

    def close(self) -> None:
        """Release the backend; later predictions raise BackendError. Safe to call twice."""
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None  # type: ignore[assignment]

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        backend = self.backend if self._backend is not None else "closed"
        return f"Model({self.name} {self.version}, {self.manifest.format}, backend={backend})"


def load(
    package: str | Path | Package,
    *,
    trust: TrustStore | None = None,
    profile: str | DeviceProfile | None = None,
    backend: BackendName | None = None,
    threads: int | None = None,
    allow_unsigned: bool = False,
) -> Model:
    """Verify a package (directory or .erpkg archive) and open its model.

    The package must be signed by a release key in ``trust`` unless ``allow_unsigned`` (then only a present
    signature is checked, when ``trust`` holds keys); hashes are always checked; all before the model file is
    opened. ``profile`` (name, path or DeviceProfile; default: the one the package was built for, if known here)
    gives threads, XNNPACK and execution providers; ``threads`` overrides its thread count. ``backend`` defaults
    to the one for the package's format.
    """
    root = package.root if isinstance(package, Package) else package
    pkg = load_package(root, trust, allow_unsigned=allow_unsigned)
    manifest = pkg.manifest
    name = backend or backend_for_format(manifest.format)
    prof = _resolve_profile(profile, manifest)
    options = backend_options(prof, name, threads)
    opened = open_backend(name, str(pkg.model_path), options, fmt=manifest.format)
    try:
        return Model(pkg, opened, prof)
    except BaseException:
        opened.close()
        raise
