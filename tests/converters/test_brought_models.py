"""Models users bring: real pretrained models from PyPI packages, converted through `edge-runtime convert` exactly
as the README says (a real process), each package then run on real input (converters.zoo.brought). One is
stateful (Silero VAD: state fed back, a sample-rate `If` folded), one a detector (BlazeFace full-range)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from converters.zoo import brought
from edge_runtime.package.manifest import Manifest

SAMPLES = "24"  # calibration samples: enough for a smoke test within the suite's time budget


def _convert(r: brought.Recipe, out, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edge_runtime.cli", "convert", str(r.source), *r.args, "--out", str(out), "-q", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in brought.RECIPES if n != "magika"])
def test_brought_model_converts_from_the_cli_and_runs_on_real_input(name, tmp_path):
    r = brought.recipe(name, tmp_path / name, int(SAMPLES))
    out = tmp_path / "pkg"
    proc = _convert(r, out)
    assert proc.returncode == 0, proc.stderr
    m = Manifest.model_validate_json((out / "manifest.json").read_text())
    assert m.accuracy is not None and m.accuracy.passed and m.accuracy.reason
    line = brought.check(r, out)
    assert "accuracy" in line or "cosine" in line or "faces" in line, line
    if name == "silero-vad":
        assert [b.input for b in m.state] == ["state"] and [i.name for i in m.inputs] == ["input", "state"]
        assert m.inputs[0].window_hop == 512
    if name == "blazeface-full-range":
        assert m.outputs.decoding.type == "ssd" and "faces per photo {'astronaut': 1" in line


@pytest.mark.slow
def test_magika_int8_is_refused_on_labelled_evidence(tmp_path):
    """magika's int8 model loses most of its accuracy on real files of known types: the guard, judging the
    labelled held-back files, refuses it with both accuracies and their intervals (float nodes not tried here,
    to keep the suite fast: the figures script runs every remedy)."""
    r = brought.recipe("magika", tmp_path / "magika", 8)  # 8 labelled files already show the drop
    proc = _convert(r, tmp_path / "pkg", "--max-float-nodes", "0")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert "labelled samples: drop" in err[0] and "accuracy float" in err[0] and not (tmp_path / "pkg").exists()
