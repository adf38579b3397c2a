"""Given a broken setup or different outputs, when the arm64 check runs, then it says so clearly: one line for a
missing host tool, a refusal for a non-arm profile, and a failing comparison for outputs beyond tolerance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.emulate import SCRIPTS, EmulationError, compare_outputs, run_golden_emulated
from tests.model_factory import trust_args

pytestmark = pytest.mark.emulation


def _golden_outputs(pkg) -> dict[str, np.ndarray]:  # noqa: ANN001
    with np.load(pkg.path(pkg.manifest.golden.file)) as data:
        return {k: data[k] for k in data.files if k.startswith("output_")}


def _npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def test_int8_outputs_two_steps_apart_fail_and_one_step_passes(tiny_tflite_package, tmp_path) -> None:
    ref = _golden_outputs(tiny_tflite_package)
    one = {k: np.clip(v.astype(np.int16) + 1, -128, 127).astype(np.int8) for k, v in ref.items()}
    two = {k: np.clip(v.astype(np.int16) + 2, -128, 127).astype(np.int8) for k, v in ref.items()}
    x86 = _npz(tmp_path / "x86.npz", ref)

    _, top1, ok = compare_outputs(tiny_tflite_package, x86, _npz(tmp_path / "one.npz", one))
    checks, _, bad = compare_outputs(tiny_tflite_package, x86, _npz(tmp_path / "two.npz", two))

    assert ok == [] and top1 == (8, 8)
    assert len(bad) == 8 and "exceeds 1" in bad[0]
    assert {c.max_abs_diff for c in checks} == {2.0}


def test_a_changed_top1_class_fails_even_within_tolerance(tiny_onnx_package, tmp_path) -> None:
    ref = _golden_outputs(tiny_onnx_package)
    flipped = dict(ref)
    probs = ref["output_0_0"].copy()
    a, b = np.argsort(probs.ravel())[-2:]  # the runner-up and the winner, made to tie the other way round
    probs.flat[a], probs.flat[b] = probs.flat[b] + 1e-6, probs.flat[b] - 1e-6
    flipped["output_0_0"] = probs

    checks, top1, problems = compare_outputs(
        tiny_onnx_package, _npz(tmp_path / "x86.npz", ref), _npz(tmp_path / "arm.npz", flipped)
    )

    assert top1 == (7, 8)
    assert any("top-1 class differs" in p for p in problems)


def test_a_profile_without_an_arm_cpu_is_refused(tiny_onnx_package) -> None:
    with pytest.raises(EmulationError, match="x86-laptop is not an emulated arm64 device"):
        run_golden_emulated(tiny_onnx_package, "x86-laptop")


def test_missing_host_tools_end_in_one_line_that_says_what_to_install(tiny_onnx_package, tmp_path) -> None:
    empty = tmp_path / "no-tools"
    empty.mkdir()
    env = {
        **os.environ,
        "EDGE_RUNTIME_ARM64_CACHE": str(tmp_path / "cache"),
        "EDGE_RUNTIME_ARM64_TOOLS_PATH": str(empty),
    }

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime.cli",
            "verify",
            str(tiny_onnx_package.root),
            *trust_args(),
            "--emulate",
            "raspberry-pi-4",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )

    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr
    assert "apt-get install" in errors[0] and "debootstrap" in errors[0] and "apt" in errors[0]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # failed before any work


def test_a_second_prepare_reuses_the_cache(arm64_env) -> None:
    cache = Path(arm64_env.site).parents[1]
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "prepare.py"), "--cache", str(cache), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    assert "debootstrap" not in proc.stderr and "pip install" not in proc.stderr and "apt-get" not in proc.stderr
    assert f'"site": "{arm64_env.site}"' in proc.stdout


def test_preprocessing_two_levels_apart_fails_and_one_level_passes(tiny_tflite_package, tmp_path) -> None:
    from converters.emulate import compare_preprocessing
    from edge_runtime.preprocess import build_lut

    lut = build_lut(tiny_tflite_package.manifest.inputs[0]).astype(np.int16)
    level = int(np.abs(np.diff(lut, axis=-1)).max())  # what one 8-bit pixel level changes in the int8 tensor
    x86 = np.random.default_rng(0).integers(-100, 100, (1, 32, 32, 3)).astype(np.int8)
    one, two = x86.copy(), x86.copy()
    one[0, 0, :4] += level  # one level: what OpenCV's aarch64 resize does to some pixels
    two[0, 0, :4] += level + 1
    ref = _npz(tmp_path / "x86.npz", {"preprocess_0_0": x86})

    ok_checks, ok = compare_preprocessing(tiny_tflite_package, ref, _npz(tmp_path / "one.npz", {"preprocess_0_0": one}))
    _, bad = compare_preprocessing(tiny_tflite_package, ref, _npz(tmp_path / "two.npz", {"preprocess_0_0": two}))

    assert ok == [] and ok_checks[0].max_abs_diff == level and 0 < ok_checks[0].share_differing < 0.01
    assert len(bad) == 1 and "more than one 8-bit level" in bad[0]
