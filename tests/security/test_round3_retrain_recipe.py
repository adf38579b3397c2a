"""Round 3: re-training converts with the parent's recipe from the registry, which whoever registered the parent
could set (X-Lineage). It must not make the server run a command or copy server files into a candidate."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.retrain import RetrainError
from fleet.retrain.gates import convert_candidate


@pytest.mark.parametrize(("options", "named"), [
    ({"prune": {"ratio": 0.3, "train_cmd": "sh -c 'touch /tmp/owned'"}}, "training command"),
    ({"extra_files": {"anchors.npy": "/etc/edge-fleet/operator.key"}}, "extra files"),
])
def test_a_registry_recipe_cannot_run_commands_or_copy_server_files(tmp_path: Path, options, named) -> None:  # noqa: ANN001
    recipe = {"options": {"source": "model.onnx", "profile": "x86-laptop", **options}}
    with pytest.raises(RetrainError, match=named):
        convert_candidate(recipe, source=tmp_path / "model.onnx", output=tmp_path / "out", calibration=None,
                          overrides={"version": "1.0.1"})
    assert not (tmp_path / "out").exists()
