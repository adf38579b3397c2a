"""Given a package built on x86, when its golden inputs run on an emulated arm64 CPU, then the outputs match x86.

Demo package (BlazeFace int8 TFLite), an int8 ONNX classifier and an int8 TFLite classifier, each on a different
profile's CPU model. Tolerances: integer outputs within one quantization step, float within 1e-4 of the output's
range, classifier top-1 identical (see converters/emulate.py).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from converters.emulate import run_golden_emulated
from tests.model_factory import trust_args

pytestmark = pytest.mark.emulation


def test_int8_onnx_classifier_matches_x86_on_raspberry_pi_5(arm64_env, int8_onnx_package) -> None:
    report = run_golden_emulated(int8_onnx_package, "raspberry-pi-5")

    assert report.passed, report.problems
    assert report.device["machine"] == "aarch64"
    assert report.qemu_cpu == "cortex-a76" and report.qemu_version.startswith("qemu-aarch64 version 10.")
    assert "backend onnxruntime" in report.ran_with
    assert report.pairs == int8_onnx_package.manifest.golden.count
    assert report.top1 == (report.pairs, report.pairs)
    # raspberry-pi-5 asks for integer I/O: the QDQ model returns uint8 (its u8 activations), one step at most apart
    assert all(t.dtype == "uint8" and t.max_abs_diff <= 1 for t in report.tensors)
    assert report.device["forbidden_importable"] == []


def test_int8_tflite_classifier_matches_x86_on_jetson_nano(arm64_env, tiny_tflite_package) -> None:
    report = run_golden_emulated(tiny_tflite_package, "jetson-nano")

    assert report.passed, report.problems
    assert report.qemu_cpu == "cortex-a57"
    assert "backend tflite" in report.ran_with
    assert report.top1 == (8, 8)
    assert {t.dtype for t in report.tensors} == {"int8"}
    assert max(t.max_abs_diff for t in report.tensors) <= 1  # one quantization step
    assert report.device["backends"] == {"tflite": None, "onnxruntime": None}  # both load on arm64


def test_verify_emulate_cli_passes_the_demo_package_on_raspberry_pi_4(arm64_env, demo_package) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "verify", str(demo_package.root), *trust_args(), "--emulate",
         "raspberry-pi-4"],
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "-cpu cortex-a72: aarch64 Python 3.11" in out
    assert "regressors (int8)" in out and "classificators (int8)" in out
    assert "preproc   input (int8):" in out  # the same frames preprocessed on both sides, compared
    assert "result    arm64 outputs match x86" in out
    assert "Traceback" not in proc.stderr
