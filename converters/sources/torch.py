"""PyTorch source: a whole pickled module (torch.save(model)) or TorchScript, exported with torch.onnx.export."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from converters.model import FloatModel
from edge_runtime.errors import ConversionError, MissingDependencyError
from edge_runtime.fsutil import sha256_file


def _load_module(torch: Any, path: Path) -> Any:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception:  # noqa: S110 - not TorchScript: try a pickled module next
        pass
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)  # noqa: S614 - user's own file, laptop
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError for bad files
        raise ConversionError(f"{path} is not a readable PyTorch model (corrupt or truncated?): {exc}") from exc
    if not isinstance(obj, torch.nn.Module):
        raise ConversionError(
            f"{path} holds a {type(obj).__name__}, not a module: save the whole model (torch.save(model)) "
            "or TorchScript; a state_dict alone has no architecture"
        )
    return obj


def load_torch(path: Path, workdir: Path, input_shape: Sequence[int] | None = None) -> FloatModel:
    """A .pt/.pth module -> float ONNX via torch.onnx.export (needs --input-shape)."""
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("torch (for PyTorch sources)", "torch") from exc
    from converters.sources.onnx import finish_onnx, load_onnx_model

    if not input_shape:
        raise ConversionError("PyTorch sources need the input shape: give --input-shape, e.g. 1,3,224,224")
    module = _load_module(torch, path)
    module.eval()
    onnx_path = workdir / "torch_export.onnx"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes: not the user's concern
            torch.onnx.export(module, (torch.zeros(*input_shape),), str(onnx_path), input_names=["input"], dynamo=False)
    except Exception as exc:  # export failures come in many types
        raise ConversionError(f"torch.onnx.export failed: {str(exc).splitlines()[0][:300]}") from exc
    kwargs = {
        "source_format": "torch",
        "source_path": path,
        "source_sha256": sha256_file(path),
        "tool_versions": {"torch": torch.__version__},
    }
    return finish_onnx(load_onnx_model(onnx_path), kwargs, workdir, input_shape)
