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


@pytest.mark.slow
@pytest.mark.parametrize("name", brought.RECIPES)
def test_brought_model_converts_from_the_cli_and_runs_on_real_input(name, tmp_path):
    r = brought.recipe(name, tmp_path / name, int(SAMPLES))
    out = tmp_path / "pkg"
    cmd = [sys.executable, "-m", "edge_runtime.cli", "convert", str(r.source), *r.args, "--out", str(out), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
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
