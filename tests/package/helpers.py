"""A minimal valid package for testing the package layer itself (no real model needed for hashing/signing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.package.store import Package, write_package


def manifest_fields(version: str = "1.0.0", profile: str = "x86-laptop") -> dict[str, Any]:
    return {
        "name": "unit",
        "version": version,
        "created": "2026-11-27T00:00:00Z",
        "format": "onnx",
        "profile": profile,
        "model_file": "model.onnx",
        "inputs": [
            {
                "name": "x",
                "shape": [1, 8, 8, 3],
                "dtype": "float32",
                "kind": "image",
                "layout": "NHWC",
                "color_order": "RGB",
            }
        ],
        "outputs": {
            "task": "classification",
            "tensors": [{"name": "y", "shape": [1, 2], "dtype": "float32"}],
            "labels": ["a", "b"],
            "decoding": {"type": "classification", "output": "y"},
        },
        "quantization": {"precision": "float32", "method": "none"},
        "golden": {"file": "golden.npz", "count": 1, "atol": 0.01},
    }


def make_package(out: Path, sign_key=None, version: str = "1.0.0") -> Package:
    import io

    buf = io.BytesIO()
    np.savez(buf, input_0_0=np.zeros((1, 8, 8, 3), np.float32), output_0_0=np.zeros((1, 2), np.float32))
    files = {"model.onnx": b"not really onnx, but hashed like one", "golden.npz": buf.getvalue()}
    return write_package(out, files, manifest_fields(version), sign_key=sign_key)
