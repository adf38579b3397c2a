"""Round 3: `registry reproduce` runs a recipe it got from the fleet server, where any operator who registers a
version can set it (the X-Lineage header's ``recipe`` replaces the signed manifest's). A recipe must not make the
reproducing operator's machine run a command it names (``prune.train_cmd``) or unpickle a file it names unless that
operator says the file is theirs (``--allow-pickle``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import ConfigError
from fleet.reproduce import reproduce

SHA = "0" * 64


def _doc(workdir: Path, source: str, **options: object) -> dict:
    """A registry version document as `GET /registry/models/NAME/versions/VERSION` returns it."""
    np.save(workdir / "calib.npy", np.zeros((4, 8), np.float32))
    recipe = {"recipe_version": 1, "workdir": str(workdir), "inputs": {},
              "options": {"source": source, "profile": "x86-laptop", "calibration": str(workdir / "calib.npy"),
                          "format": "onnx", "precision": "int8", "name": "cnn", "sign_key": None, "input_shape": [1, 8],
                          **options}}
    return {"name": "cnn", "version": "1.0.0", "lineage": {"model_file": {"sha256": SHA}, "recipe": recipe}}


def test_a_recipes_training_command_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "model.pt").write_bytes(b"")
    cmd = f"{sys.executable} -c \"open({str(marker)!r}, 'w')\""
    doc = _doc(tmp_path, "model.pt", prune={"ratio": 0.3, "train_cmd": cmd})
    with pytest.raises(ConfigError, match="train_cmd"):
        reproduce(doc, lambda _s: None, allow_pickle=True)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.pkl", "model.joblib", "model.pt", "model.pth"])
def test_a_pickled_source_named_by_a_recipe_is_not_loaded_without_allow_pickle(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "ran"
    import pickle

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    (tmp_path / name).write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ConfigError, match="--allow-pickle"):
        reproduce(_doc(tmp_path, name), lambda _s: None)
    assert not marker.exists()
