"""Bad input: one clear line, a non-zero exit, no traceback, and no package (not even a half-written one)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edge_runtime.cli import main

X86 = ["--profile", "x86-laptop"]


def _convert(capsys, tmp_path, source, *extra):
    out = tmp_path / "out"
    rc = main(["convert", str(source), "--out", str(out), *extra])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("edge-runtime: error:")]
    assert rc != 0, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.*")), "a failed conversion left files behind"
    return errors[0]


def _custom_op_model(path):
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_corrupt_truncated_and_unsupported_models(capsys, tmp_path, onnx_cnn, data_dir):
    calib = ["--calibration", str(data_dir / "calib"), *X86]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    assert "not a readable ONNX model" in _convert(capsys, tmp_path, garbage, *calib)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_cnn.read_bytes()[: onnx_cnn.stat().st_size // 2])
    assert "ONNX model" in _convert(capsys, tmp_path, truncated, *calib)
    custom = _custom_op_model(tmp_path / "custom.onnx")
    line = _convert(capsys, tmp_path, custom, "--calibration", str(data_dir / "features_calib.npy"), *X86)
    assert "onnxruntime cannot run custom.onnx" in line
    bad_pickle = tmp_path / "model.pkl"
    bad_pickle.write_bytes(b"\x80\x04not really a pickle")
    assert "not a readable pickle" in _convert(capsys, tmp_path, bad_pickle, *calib)
    unknown = tmp_path / "model.xyz"
    unknown.write_bytes(b"x")
    assert "cannot tell the format" in _convert(capsys, tmp_path, unknown, *calib)


def test_bad_calibration_data(capsys, tmp_path, onnx_cnn, sklearn_models, data_dir):
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((10, 65), np.float32))
    line = _convert(capsys, tmp_path, sklearn_models["mlp.pkl"], "--calibration", str(wide), *X86)
    assert "expects shape [1, 64]" in line and "wide.npy" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no image files" in _convert(capsys, tmp_path, onnx_cnn, "--calibration", str(empty), *X86)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    (broken / "b.png").write_bytes(b"not a png either")
    assert "cannot read image" in _convert(capsys, tmp_path, onnx_cnn, "--calibration", str(broken), *X86)
    floats = tmp_path / "floats.npy"
    np.save(floats, np.zeros((10, 16, 16), np.float32))
    line = _convert(capsys, tmp_path, onnx_cnn, "--calibration", str(floats), *X86)
    assert "takes 8-bit frames" in line and "float tensors of its shape [1, 1, 16, 16]" in line
    zero = tmp_path / "zero.npy"
    np.save(zero, np.zeros((0, 64), np.float32))
    assert "empty" in _convert(capsys, tmp_path, sklearn_models["mlp.pkl"], "--calibration", str(zero), *X86)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    line = _convert(capsys, tmp_path, onnx_cnn, "--calibration", str(data_dir / "calib"), *X86, "--labels", str(labels))
    assert "2 labels given but the model scores 10 classes" in line
    missing = ["--calibration", str(tmp_path / "nope")]
    assert "does not exist" in _convert(capsys, tmp_path, onnx_cnn, *missing, *X86)


def test_profile_and_target_checks(capsys, tmp_path, onnx_cnn, data_dir):
    calib = ["--calibration", str(data_dir / "calib")]
    assert "unknown profile 'toaster'" in _convert(capsys, tmp_path, onnx_cnn, *calib, "--profile", "toaster")
    line = _convert(capsys, tmp_path, onnx_cnn, *calib, "--profile", "raspberry-pi-4", "--precision", "float32")
    assert "does not allow precision float32" in line
    own = tmp_path / "onnx-only.yaml"
    from edge_runtime.profiles import builtin_profile_dir

    text = (builtin_profile_dir() / "x86-laptop.yaml").read_text()
    own.write_text(
        text.replace("name: x86-laptop", "name: onnx-only").replace("allowed: [onnx, tflite]", "allowed: [onnx]")
    )
    line = _convert(capsys, tmp_path, onnx_cnn, *calib, "--profile", str(own), "--format", "tflite")
    assert "does not allow format tflite" in line
    line = _convert(capsys, tmp_path, onnx_cnn, *calib, *X86, "--format", "tflite")
    assert "cannot be converted to TFLite here; use --format onnx" in line
    line = _convert(capsys, tmp_path, onnx_cnn, *calib, *X86, "--task", "detection")
    assert "detection decoding" in line
    line = _convert(
        capsys, tmp_path, onnx_cnn, *calib, *X86, "--precision", "float32", "--calibration-method", "entropy"
    )
    assert "int8 only" in line


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed here")
def test_torch_source_without_torch_names_the_extra(capsys, tmp_path, data_dir):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"whatever")
    line = _convert(capsys, tmp_path, pt, "--calibration", str(data_dir / "calib"), *X86, "--input-shape", "1,1,16,16")
    assert "torch" in line and "pip install 'edge-runtime[torch]'" in line


def test_existing_out_is_refused_unless_force(capsys, tmp_path, sklearn_models, data_dir):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["convert", str(sklearn_models["mlp.pkl"]), *X86, "--calibration", str(data_dir / "features_calib.npy")]
    assert main([*args, "--out", str(out), "-q"]) != 0
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main([*args, "--out", str(out), "-q", "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()


def test_cli_subprocess_exit_code_and_single_line(tmp_path, data_dir):
    garbage = tmp_path / "m.onnx"
    garbage.write_bytes(b"\x08\x07garbage" * 50)
    cmd = [sys.executable, "-m", "edge_runtime.cli", "convert", str(garbage), *X86, "--calibration",
           str(data_dir / "calib"), "--out", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-runtime: error: ") and "m.onnx" in lines[0], proc.stderr
    assert proc.stdout == "" and not (tmp_path / "out").exists()
