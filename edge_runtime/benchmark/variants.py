"""Expand models x backends x thread counts into benchmark variants; decide early which ones cannot run."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.package.manifest import MANIFEST_NAME

# backend name -> (model format it runs, Python module it needs)
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnx", "onnxruntime"),
    "tflite": ("tflite", "ai_edge_litert"),
    "runtime:onnxruntime": ("onnx", "onnxruntime"),
    "runtime:tflite": ("tflite", "ai_edge_litert"),
}
ALIASES = {
    "litert": "tflite", "ort": "onnxruntime", "runtime:litert": "runtime:tflite", "runtime:ort": "runtime:onnxruntime",
}
_SUFFIX_FORMAT = {".onnx": "onnx", ".tflite": "tflite"}


@dataclass
class ModelRef:
    """A model file or package as given on the command line, resolved."""

    given: str
    name: str
    format: str = "unknown"
    model_file: Path | None = None
    package_root: Path | None = None
    precision: str = "unknown"
    error: str | None = None


@dataclass
class Variant:
    """One thing to measure. `skip_reason` set: it is reported but not run."""

    id: str
    model: ModelRef
    backend: str
    threads: int
    skip_reason: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def file_size(self) -> int | None:
        f = self.model.model_file
        return f.stat().st_size if f is not None and f.is_file() else None


def onnx_precision(path: Path) -> str:
    """'int8' when the graph holds quantize/QLinear/integer ops, 'float32' otherwise ('unknown' without onnx)."""
    try:
        import onnx
    except ImportError:
        return "unknown"
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - a corrupt file is reported by the backend that tries to load it
        return "unknown"
    ops = {n.op_type for n in graph.node}
    quant = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
    return "int8" if ops & quant else "float32"


def resolve_model(given: str) -> ModelRef:
    """Find the model file behind a path: an .onnx/.tflite file, a package directory or an .erpkg archive."""
    path = Path(given)
    ref = ModelRef(given=given, name=path.name or given)
    if not path.exists():
        ref.error = f"no such file or directory: {given}"
        return ref
    if path.is_dir() or path.suffix == ".erpkg":
        if path.is_dir() and not (path / MANIFEST_NAME).is_file():
            ref.error = f"{given} is a directory without {MANIFEST_NAME} (not a model package)"
            return ref
        from edge_runtime.package.store import load_package

        try:
            pkg = load_package(path, allow_unsigned=True)  # measuring speed, not deploying: hashes only
        except EdgeRuntimeError as exc:
            ref.error = str(exc)
            return ref
        man = pkg.manifest
        ref.name, ref.format = f"{man.name}@{man.version}", man.format
        ref.model_file, ref.package_root, ref.precision = pkg.model_path, pkg.root, man.quantization.precision
        return ref
    ref.format = _SUFFIX_FORMAT.get(path.suffix.lower(), "unknown")
    ref.model_file = path
    if ref.format == "unknown":
        ref.error = f"unknown model format {path.suffix or '(no suffix)'}: expected .onnx, .tflite or a package"
    elif ref.format == "onnx":
        ref.precision = onnx_precision(path)
    return ref


def _skip_reason(ref: ModelRef, backend: str) -> str | None:
    if ref.error:
        return ref.error
    fmt, module = BACKENDS[backend]
    if ref.format != fmt:
        return f"backend {backend} cannot run {ref.format} models"
    if backend.startswith("runtime:") and ref.package_root is None:
        return f"backend {backend} runs packages, not bare model files"
    if importlib.util.find_spec(module) is None:
        return f"optional backend module '{module}' is not installed"
    if backend.startswith("runtime:") and importlib.util.find_spec("edge_runtime.api") is None:
        return "edge_runtime.api is not available in this installation"
    return None


def expand_variants(models: list[str], backends: list[str], threads: list[int]) -> list[Variant]:
    """Every model x backend x thread count, in that nesting order; ids are unique.

    What cannot run at all is listed once, not once per grid cell: a bad model (one row per model), an unknown
    backend (one row per backend), a format the backend does not run (one row per model and backend).
    """
    refs = [resolve_model(m) for m in models]
    names = [r.name for r in refs]
    wanted = list(dict.fromkeys(ALIASES.get(b, b) for b in backends))
    unknown = [b for b in wanted if b not in BACKENDS]
    out: list[Variant] = []
    for i, ref in enumerate(refs):
        label = ref.name if names.count(ref.name) == 1 else f"{ref.name}#{i + 1}"
        if ref.error:
            out.append(Variant(label, ref, "-", threads[0], ref.error))
            continue
        for backend in (b for b in wanted if b in BACKENDS):
            reason = _skip_reason(ref, backend)
            if reason and "cannot run" in reason:
                out.append(Variant(f"{label}/{backend}", ref, backend, threads[0], reason))
                continue
            out.extend(Variant(f"{label}/{backend}/t{t}", ref, backend, t, reason) for t in threads)
    for b in unknown:
        reason = f"unknown backend {b!r} (known: {', '.join(BACKENDS)})"
        out.append(Variant(f"*/{b}", ModelRef(given="-", name="-"), b, threads[0], reason))
    return out
