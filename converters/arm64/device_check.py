"""Run a package's golden inputs with the device runtime; meant to run INSIDE qemu-aarch64 with only device deps.

Usage: ``python3.11 device_check.py --package DIR --out OUTPUTS.npz --report REPORT.json [--threads N]``

It proves, on the emulated CPU, that ``import edge_runtime`` works without TensorFlow, torch or the converter, that
both backends load, and it writes the outputs of every golden input (``output_<pair>_<tensor>``, as in the
package's golden file) for the host to compare with the x86 outputs of the same package. Standard library, numpy and
edge_runtime only.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import re
import sys
from pathlib import Path

FORBIDDEN = ("tensorflow", "torch", "keras", "converters")
VERSIONS = ("numpy", "onnxruntime", "ai-edge-litert", "opencv-python-headless", "pydantic", "cryptography")
_KEY = re.compile(r"^(input|output)_(\d+)_(\d+)$")


class CheckFailed(Exception):
    """The device-side check found something wrong; the message is the one line the host reports."""


def forbidden_present() -> list[str]:
    """Laptop-only packages that are importable or imported here (there must be none)."""
    return [name for name in FORBIDDEN if name in sys.modules or importlib.util.find_spec(name) is not None]


def read_golden(path: Path) -> list[list[object]]:
    """golden.npz -> inputs per pair, in pair and tensor order."""
    import numpy as np

    with np.load(path) as data:
        keys = [(int(m[2]), int(m[3]), k) for k in data.files if (m := _KEY.match(k)) and m[1] == "input"]
        pairs: dict[int, dict[int, object]] = {}
        for i, k, key in keys:
            pairs.setdefault(i, {})[k] = data[key]
    return [[tensors[k] for k in sorted(tensors)] for _, tensors in sorted(pairs.items())]


PROBE_FRAMES = ((480, 640), (720, 1280), (256, 320))  # camera-like sizes, (height, width)


def preprocess_probe(manifest) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """``preprocess_<input>_<j>``: each image input made from fixed noise frames of camera-like sizes (the host makes
    the same): the one preprocessing implementation has to give the same tensors on both architectures."""
    import numpy as np

    from edge_runtime.preprocess import ImagePreprocessor

    out: dict[str, object] = {}
    for i, spec in enumerate(manifest.inputs):
        if spec.kind != "image":
            continue
        pre = ImagePreprocessor(spec, "BGR")
        for j, (h, w) in enumerate(PROBE_FRAMES):
            frame = np.random.default_rng(j).integers(0, 256, (h, w, 3), dtype=np.uint8)
            out[f"preprocess_{i}_{j}"] = pre(frame)[0]
    return out


def check(package: Path, out: Path, profile: str | None, threads: int, host: bool = False) -> dict[str, object]:
    """Run every golden input through ``edge_runtime.api``; write the outputs to ``out``; return the report.

    ``profile`` gives the backend settings (XNNPACK, providers); ``host``: a laptop reference run, no import checks.
    """
    import numpy as np

    before = [] if host else forbidden_present()
    if before:
        raise CheckFailed(f"laptop-only packages are importable on the device side: {', '.join(before)}")
    import edge_runtime
    from edge_runtime.api import load
    from edge_runtime.backends import backend_status
    from edge_runtime.package import load_package

    pkg = load_package(package, allow_unsigned=True)  # hashes checked on the device side too (a test harness)
    manifest = pkg.manifest
    if manifest.golden is None:
        raise CheckFailed(f"package {manifest.name} has no golden set")
    inputs = read_golden(pkg.path(manifest.golden.file))
    outputs = preprocess_probe(manifest)
    with load(pkg, profile=profile, threads=threads, allow_unsigned=True) as model:
        for i, arrays in enumerate(inputs):
            for k, arr in enumerate(model.predict_tensors(list(arrays))):
                outputs[f"output_{i}_{k}"] = np.asarray(arr)
        backend = model.backend
    np.savez(out, **outputs)
    after = [] if host else forbidden_present()
    if after:
        raise CheckFailed(f"running the package imported laptop-only packages: {', '.join(after)}")
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "edge_runtime": str(Path(edge_runtime.__file__).parent),
        "versions": {name: importlib.metadata.version(name) for name in VERSIONS},
        "backends": backend_status(),
        "ran_with": f"edge_runtime.api, backend {backend}" + (f", profile {profile}" if profile else ""),
        "pairs": len(inputs),
        "forbidden_importable": after,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, required=True, help="package directory")
    parser.add_argument("--out", type=Path, required=True, help="where to write the outputs (.npz)")
    parser.add_argument("--report", type=Path, required=True, help="where to write the report (.json)")
    parser.add_argument("--profile", help="device profile whose backend settings to use (default: the package's)")
    parser.add_argument("--threads", type=int, default=1, help="inference threads")
    parser.add_argument("--host", action="store_true", help="reference run on the laptop: skip the import checks")
    args = parser.parse_args()
    from edge_runtime.errors import EdgeRuntimeError

    try:
        report = check(args.package, args.out, args.profile, args.threads, args.host)
    except (CheckFailed, EdgeRuntimeError) as exc:
        print(f"device check failed: {exc}", file=sys.stderr)
        return 3
    args.report.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
