"""The recorded conversion recipe (the manifest's provenance block) and converters.recipe's API: a real ONNX CNN
converted from inside a real git repository, re-run from its recipe (identical model bytes), then run on a new
source model as re-training does."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from converters.recipe import convert_with_recipe, git_state, recipe_of
from edge_runtime.cli import main
from edge_runtime.errors import ConversionError
from edge_runtime.fsutil import sha256_file, tree_sha256
from edge_runtime.package import load_package
from tests.converters.conftest import build_onnx_cnn
from tests.model_factory import classifier_package

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]


def _git_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run([*GIT, "init", "-q", str(path)], check=True)
    return path


def _commit(repo: Path) -> str:
    subprocess.run([*GIT, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-q", "-m", "model"], check=True)
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


@pytest.fixture(scope="module")
def converted(tmp_path_factory, onnx_cnn, data_dir, session_keys):
    """Given a CNN committed in a git repository, when converted with every input a file, then a package."""
    root = tmp_path_factory.mktemp("recipe")
    repo = _git_repo(root / "repo")
    source = Path(shutil.copy(onnx_cnn, repo / "cnn.onnx"))
    commit = _commit(repo)
    labels = root / "labels.txt"
    labels.write_text("\n".join(f"digit-{i}" for i in range(10)) + "\n")
    out = root / "pkg"
    rc = main(["convert", str(source), "--profile", "x86-laptop", "--calibration", str(data_dir / "calib"),
               "--validation", str(data_dir / "valid"), "--labels", str(labels), "--out", str(out),
               "--sign-key", str(session_keys[0]), "--name", "digits-cnn", "--version", "1.2.0",
               "--archive", str(root / "pkg.erpkg"), "-q"])  # fmt: skip
    assert rc == 0
    return {"root": root, "source": source, "commit": commit, "labels": labels, "out": out}


def test_the_package_records_every_option_input_digest_tool_and_the_git_commit(converted, data_dir, session_keys):
    pkg = load_package(converted["out"], allow_unsigned=True)
    prov = pkg.manifest.provenance
    assert prov is not None and not prov.not_reproducible
    o = prov.options
    assert (o["source"], o["calibration"], o["validation"]) == (
        str(converted["source"]), str(data_dir / "calib"), str(data_dir / "valid"))
    assert (o["profile"], o["name"], o["version"], o["precision"]) == ("x86-laptop", "digits-cnn", "1.2.0", "int8")
    assert o["sign_key"] == str(session_keys[0]) and o["labels"] == str(converted["labels"])
    assert "out" not in o and "archive" not in o and "force" not in o  # where it went is not how it was made
    digests = {k: v.sha256 for k, v in prov.inputs.items()}
    assert digests["source"] == sha256_file(converted["source"]) == pkg.manifest.source.sha256
    assert digests["calibration"] == tree_sha256(data_dir / "calib")
    assert digests["validation"] == tree_sha256(data_dir / "valid")
    assert digests["labels"] == sha256_file(converted["labels"]) and "profile" in digests
    assert prov.git is not None and (prov.git.commit, prov.git.dirty) == (converted["commit"], False)
    assert {"python", "numpy", "onnx", "onnxruntime", "edge-runtime"} <= set(pkg.manifest.tools)
    # and every way of pointing at the package gives the same recipe, JSON through and through
    recipe = recipe_of(converted["out"])
    assert recipe == recipe_of(converted["root"] / "pkg.erpkg") == recipe_of(pkg) == recipe_of(recipe)
    assert json.loads(json.dumps(recipe)) == recipe


def test_the_recipe_re_runs_to_identical_model_bytes_and_runs_on_a_new_source(converted, digits, session_keys):
    recipe, root = recipe_of(converted["out"]), converted["root"]
    # when the recorded conversion is run again on the same source
    again = convert_with_recipe(recipe, source=converted["source"], output=root / "again", progress=lambda s: None)
    # then the model file is the same, byte for byte, and signed with the recorded key
    assert sha256_file(again / "model.onnx") == sha256_file(converted["out"] / "model.onnx")
    assert (again / "signature.json").read_text() != "" and load_package(again, allow_unsigned=True).manifest.name \
        == "digits-cnn"
    # when it runs on a re-trained source (other weights) with a new version
    new_source = build_onnx_cnn(root / "retrained.onnx", digits, seed=1)
    new = convert_with_recipe(recipe, source=new_source, output=root / "new", overrides={"version": "1.3.0"},
                              progress=lambda s: None)  # fmt: skip
    m = load_package(new, allow_unsigned=True).manifest
    # then the same options made it (name kept, not the new file's stem), and it records its own source
    assert (m.name, m.version, m.quantization.precision, m.outputs.labels[0]) == ("digits-cnn", "1.3.0", "int8",
                                                                                  "digit-0")  # fmt: skip
    assert m.provenance.inputs["source"].sha256 == sha256_file(new_source) != recipe["inputs"]["source"]["sha256"]
    assert m.provenance.git is None  # the new source is in no repository: absent, not an error
    assert sha256_file(new / "model.onnx") != sha256_file(converted["out"] / "model.onnx")


def test_a_dirty_repository_is_flagged_and_no_repository_is_absent(tmp_path):
    repo = _git_repo(tmp_path / "repo")
    (repo / "train.py").write_text("print('v1')\n")
    commit = _commit(repo)
    (repo / "train.py").write_text("print('v2')\n")
    state = git_state(repo / "model.onnx")
    assert state is not None and (state.commit, state.dirty) == (commit, True)
    assert git_state(tmp_path / "elsewhere" / "model.onnx") is None


def test_a_package_without_a_recipe_and_a_recipe_with_missing_data_are_refused(tmp_path, converted):
    old = classifier_package(tmp_path / "old")
    with pytest.raises(ConversionError, match="no recorded recipe"):
        recipe_of(old.root)
    with pytest.raises(ConversionError, match="not a conversion recipe"):
        recipe_of({"options": "nope"})
    recipe = recipe_of(converted["out"])
    recipe["options"]["calibration"] = str(tmp_path / "gone")
    with pytest.raises(ConversionError, match="does not exist"):
        convert_with_recipe(recipe, source=converted["source"], output=tmp_path / "x", progress=lambda s: None)


@pytest.mark.slow
def test_a_tflite_int8_conversion_re_runs_to_identical_model_bytes(tmp_path, digits):
    """The TFLite converter and its int8 calibration are deterministic here (ONNX int8: the test above)."""
    import numpy as np
    import tensorflow as tf

    from converters.pipeline import ConvertOptions, convert

    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((8, 8, 1), batch_size=1, name="pixels")
    h = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    out = tf.keras.layers.Dense(10, activation="softmax", name="probs")(tf.keras.layers.Flatten()(h))
    tf.keras.Model(inp, out).save(tmp_path / "digits.keras")
    np.save(tmp_path / "calib.npy", (digits.x[:48].reshape(-1, 8, 8) * 255).round().astype(np.uint8))
    first = convert(ConvertOptions(source=tmp_path / "digits.keras", profile="raspberry-pi-4", format="tflite",
                                   calibration=tmp_path / "calib.npy", out=tmp_path / "p1", input_kind="image",
                                   max_samples=32), progress=lambda s: None)  # fmt: skip
    assert first.manifest.format == "tflite" and first.manifest.quantization.precision == "int8"
    again = convert_with_recipe(recipe_of(first), source=tmp_path / "digits.keras", output=tmp_path / "p2",
                                progress=lambda s: None)  # fmt: skip
    assert sha256_file(again / "model.tflite") == sha256_file(first.root / "model.tflite")
    assert "tensorflow" in first.manifest.tools or "tensorflow-cpu" in first.manifest.tools


def test_the_registry_lineage_comes_from_the_recipe_and_the_operator_overrides_it(converted, data_dir):
    from fleet.server.registry import LineageExtra, lineage_of

    m = load_package(converted["out"], allow_unsigned=True).manifest
    lin = lineage_of(m, LineageExtra())
    assert lin["recipe"] == recipe_of(m) and (lin["git_commit"], lin["git_dirty"]) == (converted["commit"], False)
    assert lin["validation_sha256"] == tree_sha256(data_dir / "valid")
    assert lin["model_file"] == {"path": "model.onnx", "sha256": m.file_entry("model.onnx").sha256}
    given = lineage_of(m, LineageExtra(git_commit="b" * 40, git_dirty=True, training_command="train.py"))
    assert (given["git_commit"], given["git_dirty"], given["training_command"]) == ("b" * 40, True, "train.py")
    assert given["recipe"] == lin["recipe"]


def test_a_relative_recorded_path_is_found_from_another_folder_through_the_recorded_workdir(tmp_path, monkeypatch):
    from converters.recipe import resolve

    (tmp_path / "project" / "calib").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    recipe = {"workdir": str(tmp_path / "project")}
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert resolve("calib", recipe) == tmp_path / "project" / "calib"
    (tmp_path / "elsewhere" / "calib").mkdir()  # the same path from here wins: paths are as the user gave them
    assert resolve("calib", recipe) == Path("calib")
    assert resolve("gone", recipe) == Path("gone")  # missing everywhere: as given, for the error to name it
