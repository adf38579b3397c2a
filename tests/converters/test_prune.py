"""Structured pruning (`convert --prune`): heads found on the autograd graph, channels really removed, the
manifest's record, the training-command contract, and the one-line refusals.

Given a small CNN trained here on the labelled digits, when it is converted with --prune through the real CLI,
then the ONNX model in the package has fewer channels, the outputs keep their shape, the manifest records the
ratio, MACs, parameters and the fine-tune, and int8 still agrees with the pruned float model within the guard.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from tests.converters.prune_data import INPUT_SHAPE, needs_prune, small_cnn

pytestmark = needs_prune
X86 = ["--profile", "x86-laptop"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", "convert", *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def _conv_out_channels(path: Path) -> list[int]:
    g = onnx.load(str(path)).graph
    inits = {i.name: i for i in g.initializer}
    out = []
    for n in g.node:
        w = n.input[1] if n.op_type == "Conv" and len(n.input) > 1 else None
        if w in inits:
            out.append(numpy_helper.to_array(inits[w]).shape[0])
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == 3 and \
                len(inits[n.input[0]].dims) == 4:  # fmt: skip
            out.append(inits[n.input[0]].dims[0])  # int8 QDQ: the quantized conv weights
    return out


class TwoHeads:
    """A detector-like module: a shared trunk, then a box head and a score head (both must stay whole)."""

    @staticmethod
    def build():  # type: ignore[no-untyped-def]
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.trunk = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                           nn.ReLU())  # fmt: skip
                self.boxes = nn.Conv2d(16, 4, 1)
                self.scores = nn.Conv2d(16, 2, 1)

            def forward(self, x):  # type: ignore[no-untyped-def]
                h = self.trunk(x)
                return self.boxes(h), torch.sigmoid(self.scores(h))

        return Net()


def test_heads_are_found_and_kept_whole():
    import torch

    from converters.optimize.prune import output_heads, prune

    net = TwoHeads.build()
    assert sorted(output_heads(net, torch.zeros(1, 1, 16, 16))) == ["boxes", "scores"]
    res = prune(net, (1, 1, 16, 16), 0.5)
    boxes, scores = net(torch.zeros(1, 1, 16, 16))
    assert boxes.shape == (1, 4, 16, 16) and scores.shape == (1, 2, 16, 16)
    assert net.trunk[0].out_channels == 8 and net.trunk[2].out_channels == 8  # half of 16, trunk only
    assert res.params_after < res.params_before and res.macs_after < res.macs_before / 2
    assert set(res.excluded) == {"boxes", "scores"}


def test_group_importance_prunes_too():
    import torch

    from converters.optimize.prune import prune

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 12, 3), torch.nn.BatchNorm2d(12), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(12 * 14 * 14, 3))  # fmt: skip
    res = prune(net, (1, 1, 16, 16), 0.25, "group")
    assert net[0].out_channels == 9 and net[1].num_features == 9 and net[4].in_features == 9 * 14 * 14
    assert res.excluded == ("4",)


@pytest.mark.slow
def test_convert_prune_builtin_fine_tune(tmp_path):
    cnn = small_cnn()
    out = tmp_path / "pkg"
    res = _cli(str(cnn.model), *X86, "--calibration", str(cnn.train), "--validation", str(cnn.valid), "--out",
               str(out), "--input-shape", INPUT_SHAPE, "--prune", "0.5", "--fine-tune-epochs", "2",
               "--max-samples", "48")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "pruned 50% of channels" in res.stderr
    m = json.loads((out / "manifest.json").read_text())
    pr = m["pruning"]
    assert pr["ratio"] == 0.5 and pr["importance"] == "l1" and pr["fine_tune"] == "builtin"
    assert pr["params_after"] < 0.4 * pr["params_before"] and pr["macs_after"] < 0.4 * pr["macs_before"]
    assert pr["accuracy_samples"] == 360 and abs(pr["float_accuracy_before"] - cnn.accuracy) < 1e-9
    assert pr["float_accuracy_after"] > 0.5  # a working classifier after pruning and two epochs, not chance (0.1)
    assert m["source"]["filename"] == "cnn.pt" and "torch-pruning" in m["tools"]
    channels = _conv_out_channels(out / "model.onnx")
    assert channels and max(channels) <= 16  # the widest conv had 32 output channels before pruning
    assert m["outputs"]["tensors"][0]["shape"] == [1, 10]
    assert m["accuracy"]["top1_agreement"] >= 0.9  # int8 vs the pruned float model, on the 360 held-out digits


TRAIN = textwrap.dedent("""
    import os, sys
    import numpy as np, torch
    data, model_in, out = sys.argv[1:4]
    assert data == os.environ["EDGE_TRAIN_DATA"] and out == os.environ["EDGE_TRAIN_OUTPUT"]
    d = np.load(os.path.join(data, "train.npz"))
    m = torch.load(model_in, weights_only=False)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    m.train()
    for i in range(0, len(d["x"]), 64):
        opt.zero_grad()
        x, y = torch.from_numpy(d["x"][i:i + 64]), torch.from_numpy(d["y"][i:i + 64])
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    torch.save(m, out)
    print(f"trained on {len(d['x'])} samples of shape {d['x'].shape[1:]}")
""")


@pytest.mark.slow
def test_convert_prune_with_train_command(tmp_path):
    cnn = small_cnn()
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    out = tmp_path / "pkg"
    res = _cli(str(cnn.model), *X86, "--calibration", str(cnn.train), "--max-samples", "64", "--out", str(out),
               "--input-shape", INPUT_SHAPE, "--prune", "0.3", "--prune-importance", "group",
               "--train-cmd", f"{sys.executable} {script} {{data}} {{model}} {{output}}")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    pr = json.loads((out / "manifest.json").read_text())["pruning"]
    assert pr["fine_tune"] == "command" and pr["importance"] == "group"
    held_back = round(1437 * 0.2)  # without --validation, convert holds back 20% of the calibration digits
    assert f"trained on {1437 - held_back} samples of shape (1, 16, 16)" in pr["fine_tune_summary"]


@pytest.mark.slow
def test_failing_train_command_is_one_line(tmp_path):
    cnn = small_cnn()
    script = tmp_path / "bad.py"
    script.write_text("import sys\nprint('loss diverged at epoch 3')\nsys.exit(3)\n")
    out = tmp_path / "pkg"
    res = _cli(str(cnn.model), *X86, "--calibration", str(cnn.valid), "--max-samples", "32", "--out", str(out),
               "--input-shape", INPUT_SHAPE, "--prune", "0.3", "--train-cmd", f"{sys.executable} {script}")  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--train-cmd exited with code 3: loss diverged at epoch 3" in res.stderr
    assert not out.exists()


def test_prune_refuses_a_non_torch_source(onnx_cnn, data_dir, tmp_path):
    res = _cli(str(onnx_cnn), *X86, "--calibration", str(data_dir / "calib"), "--out", str(tmp_path / "p"),
               "--prune", "0.3")  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pruning needs a PyTorch source" in lines[0] and "not a onnx model" in lines[0]
    assert "torch.save(model)" in lines[0]
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(("flags", "says"), [
    (["--train-cmd", "x"], "--train-cmd applies with --prune RATIO only"),
    (["--prune", "1.5"], "--prune takes a share of channels between 0 and 1"),
    (["--prune", "0.3", "--fine-tune-epochs", "-1"], "--fine-tune-epochs"),
])  # fmt: skip
def test_prune_flag_mistakes(flags, says, onnx_cnn, data_dir, tmp_path):
    res = _cli(str(onnx_cnn), *X86, "--calibration", str(data_dir / "calib"), "--out", str(tmp_path / "p"), *flags)
    assert res.returncode == 2 and says in res.stderr and "Traceback" not in res.stderr


def test_torchscript_cannot_be_pruned(tmp_path):
    import torch

    from converters.optimize import PruningError
    from converters.optimize.stage import load_module

    path = tmp_path / "ts.pt"
    torch.jit.trace(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)), torch.zeros(1, 1, 8, 8)).save(str(path))
    with pytest.raises(PruningError, match="TorchScript, which cannot be pruned"):
        load_module(path)
