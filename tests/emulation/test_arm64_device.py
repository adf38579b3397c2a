"""Given only the device dependencies on arm64, when edge_runtime is imported and `edge-runtime run` processes a
short video file under QEMU, then it works without TensorFlow, torch or the converter, and finds what x86 finds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from converters.emulate import run_emulated
from tests.model_factory import trust_args

pytestmark = pytest.mark.emulation

IMPORT_CHECK = """
import importlib.util, json, platform, sys
import edge_runtime, edge_runtime.api, edge_runtime.cli, edge_runtime.pipeline
from edge_runtime.backends import backend_status
print(json.dumps({
    "machine": platform.machine(),
    "python": platform.python_version(),
    "importable": {m: importlib.util.find_spec(m) is not None for m in ("tensorflow", "torch", "converters")},
    "imported": sorted(m for m in ("tensorflow", "torch", "keras") if m in sys.modules),
    "backends": backend_status(),
    "edge_runtime": edge_runtime.__file__,
}))
"""


def test_import_edge_runtime_on_arm64_with_device_dependencies_only(arm64_env) -> None:
    proc = run_emulated(arm64_env, "cortex-a72", ["-c", IMPORT_CHECK])

    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["machine"] == "aarch64" and info["python"].startswith("3.11.")
    assert info["importable"] == {"tensorflow": False, "torch": False, "converters": False}
    assert info["imported"] == []
    assert info["backends"] == {"tflite": None, "onnxruntime": None}
    assert info["edge_runtime"].startswith(arm64_env.project)  # the copy, not this checkout


def _write_clip(path: Path, frames: int = 6) -> Path:
    from skimage import data

    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    # Lossless FFV1: FFmpeg's MJPEG decoder rounds differently on aarch64, which would blur what is compared here.
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (256, 256))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(cv2.resize(np.roll(face, 8 * i, axis=1), (256, 256)))
    writer.release()
    return path


def _detections(stdout: str) -> list[list[dict]]:
    return [json.loads(line)["detections"] for line in stdout.splitlines() if line.startswith("{")]


def test_edge_runtime_run_on_a_video_under_emulation_finds_the_same_faces(arm64_env, demo_package, tmp_path) -> None:
    clip = _write_clip(tmp_path / "clip.mkv")
    args = ["-m", "edge_runtime.cli", "run", "--package", str(demo_package.root), *trust_args(), "--source", str(clip),
            "--max-frames", "4", "--threads", "1", "--no-summary"]  # fmt: skip

    arm = run_emulated(arm64_env, "cortex-a72", args)
    x86 = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)

    assert arm.returncode == 0, arm.stderr
    assert x86.returncode == 0, x86.stderr
    arm_dets, x86_dets = _detections(arm.stdout), _detections(x86.stdout)
    assert len(arm_dets) == len(x86_dets) == 4
    for a_frame, x_frame in zip(arm_dets, x86_dets, strict=True):
        assert len(a_frame) == len(x_frame) >= 1  # the astronaut's face, in every frame
        for a, x in zip(a_frame, x_frame, strict=True):
            # Not bit-identical: OpenCV's aarch64 INTER_LINEAR resize rounds some pixels one level differently (the
            # report's "preproc" line counts them), so boxes move by about a pixel. The model itself matches exactly.
            assert a["label"] == x["label"] == "face"
            assert abs(a["score"] - x["score"]) <= 0.02
            assert np.abs(np.subtract(a["box"], x["box"])).max() <= 3.0  # pixels, about 1% of the frame
