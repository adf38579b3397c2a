"""`edge-runtime registry reproduce` and MLflow interop with real parts: one real `edge-runtime fleet serve`
process (SQLite, real mosquitto) for the module; packages converted in the tests by the real `edge-runtime convert`
(relative paths, as an operator types them); the registry CLI through its real entry point in this process (which
saves an interpreter start per command); a real local MLflow registry (SQLite backend, local artifact folder, no
MLflow server).

- reproduce: identical model bytes; then a changed calibration image and a missing validation folder are named as
  the inputs that differ.
- MLflow: `convert models:/NAME@ALIAS` takes the source from it and records the version it resolved to; the
  package reproduces from that pinned version after the alias moved; `registry export` puts it in MLflow with
  lineage tags and an alias; without the [mlflow] extra both commands say so in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.fsutil import sha256_file
from edge_runtime.package import generate_keypair, load_package, load_private_key
from fleet.mlflow_export import EXPERIMENT
from tests.converters.conftest import DIGIT_HW, Digits, build_onnx_cnn
from tests.fleet_server.conftest import FleetServer, add_user
from tests.integration.helpers import CLI
from tests.model_factory import classifier_package
from tests.mqtt_broker import Mosquitto

pytestmark = pytest.mark.mqtt


def _digits() -> Digits:
    from sklearn.datasets import load_digits

    d = load_digits()
    frames = np.stack([cv2.resize((img * 16).clip(0, 255).astype(np.uint8), (DIGIT_HW, DIGIT_HW))
                       for img in d.images])  # fmt: skip
    return Digits((d.data / 16.0).astype(np.float32), d.target, frames)


def registry(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The real `edge-runtime registry ...` entry point, in this process (the server is a real process)."""
    capsys.readouterr()
    rc = main(["registry", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    """One real fleet server (and broker) for the module, with an operator token."""
    root = tmp_path_factory.mktemp("fleet")
    broker = Mosquitto(root / "broker").start()
    db = f"sqlite:///{root / 'fleet.db'}"
    server = FleetServer(broker.port, db, root / "fleet")
    server.token = add_user(db, "olga", "operator")
    try:
        yield server.start()
    finally:
        server.stop()
        broker.stop()


@pytest.fixture
def operator(fleet: FleetServer, monkeypatch: pytest.MonkeyPatch) -> FleetServer:
    monkeypatch.setenv("EDGE_FLEET_SERVER", fleet.url)
    monkeypatch.setenv("EDGE_FLEET_TOKEN", fleet.token or "")
    return fleet


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder: a float CNN, calibration and validation image folders, a release key."""
    digits = _digits()
    build_onnx_cnn(tmp_path / "cnn.onnx", digits)
    for name, sl in (("calib", slice(1200, 1232)), ("valid", slice(1400, 1416))):
        (tmp_path / name).mkdir()
        for i, frame in enumerate(digits.frames[sl]):
            cv2.imwrite(str(tmp_path / name / f"{i:04d}.png"), frame)
    generate_keypair(tmp_path / "release")
    return tmp_path


def test_a_registered_conversion_reproduces_identically_and_a_changed_input_is_named(project, operator, monkeypatch,
                                                                                     capsys):  # fmt: skip
    monkeypatch.chdir(project)  # relative paths, as an operator types them in the project folder
    rc = main(["convert", "cnn.onnx", "--profile", "x86-laptop", "--calibration", "calib", "--validation", "valid",
               "--out", "pkg", "--sign-key", "release.key", "--name", "digits", "--max-samples", "32", "-q"])
    assert rc == 0
    old = classifier_package(project / "old", version="0.9.0", sign_key=load_private_key(project / "release.key"))
    for pkg in ("pkg", str(old.root)):
        rc, out, err = registry(capsys, "register", pkg)
        assert rc == 0, err
    # when the version is reproduced from the recipe the server recorded
    rc, out, err = registry(capsys, "reproduce", "digits", "1.0.0", "-q")
    # then the re-run conversion made the same model file, byte for byte
    manifest = json.loads((project / "pkg" / "manifest.json").read_text())
    model_sha = next(f["sha256"] for f in manifest["files"] if f["path"] == manifest["model_file"])
    assert rc == 0, out + err
    assert out.strip() == f"digits 1.0.0: identical model bytes (sha256 {model_sha})"
    # when one calibration image changes
    frame = cv2.imread(str(project / "calib" / "0003.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(project / "calib" / "0003.png"), 255 - frame)
    rc, out, err = registry(capsys, "--json", "reproduce", "digits", "1.0.0", "-q")
    # then the calibration data is reported as the input that differs, and the bytes differ
    assert rc == 1, out + err
    rep = json.loads(out)
    assert [i["role"] for i in rep["inputs"]] == ["calibration"] and rep["inputs"][0]["path"] == "calib"
    assert rep["identical"] is False and rep["recorded_sha256"] == model_sha != rep["sha256"]
    assert rep["tools"] == [] and rep["missing"] == []
    # when the validation folder is gone: named as missing, nothing converted
    (project / "valid").rename(project / "valid.moved")
    rc, out, err = registry(capsys, "reproduce", "digits", "1.0.0", "-q")
    assert rc == 1 and "input validation valid is missing" in out, out + err
    # and a version made before recipes were recorded is a usage error: one line, exit 2
    rc, out, err = registry(capsys, "reproduce", "tiny", "0.9.0")
    assert rc == 2 and "no recorded recipe" in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def mlflow_registry(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Model `cnn` in a local MLflow registry: version 1 and 2 (other weights), alias production -> 2."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import cv2
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("training", artifact_location=(root / "artifacts").as_uri())
    # where export logs packages (else MLflow's default, ./mlruns of whichever folder first made the experiment)
    client.create_experiment(EXPERIMENT, artifact_location=(root / "exports").as_uri())
    client.create_registered_model("cnn")
    digits, runs = _digits(), {}
    for seed in (0, 1):
        (root / f"seed{seed}").mkdir()
        model = build_onnx_cnn(root / f"seed{seed}" / "model.onnx", digits, seed=seed)
        run = client.create_run(exp)
        client.log_artifact(run.info.run_id, str(model), artifact_path="model")
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version("cnn", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        runs[str(mv.version)] = (run.info.run_id, sha256_file(model))
    client.set_registered_model_alias("cnn", "production", "2")
    (root / "calib").mkdir()
    for i, frame in enumerate(digits.frames[1200:1232]):
        cv2.imwrite(str(root / "calib" / f"{i:04d}.png"), frame)
    return {"uri": uri, "client": client, "runs": runs, "root": root}


def test_convert_from_mlflow_reproduce_after_the_alias_moved_and_export_with_lineage(mlflow_registry, operator,
                                                                                      tmp_path, monkeypatch,
                                                                                      capsys):  # fmt: skip
    uri, client, runs = mlflow_registry["uri"], mlflow_registry["client"], mlflow_registry["runs"]
    generate_keypair(tmp_path / "release")
    monkeypatch.chdir(tmp_path)
    # when the source is the MLflow model's production alias
    rc = main(["convert", "models:/cnn@production", "--mlflow-uri", uri, "--profile", "x86-laptop",
               "--calibration", str(mlflow_registry["root"] / "calib"), "--out", "pkg", "--sign-key", "release.key",
               "--max-samples", "24", "-q"])  # fmt: skip
    assert rc == 0
    # then the package is named after the MLflow model and records the version and run the alias resolved to
    m = load_package(tmp_path / "pkg", allow_unsigned=True).manifest
    assert m.name == "cnn" and m.provenance.mlflow.model_dump() == {
        "model_uri": "models:/cnn@production", "name": "cnn", "version": "2", "run_id": runs["2"][0]}
    assert m.provenance.inputs["source"].sha256 == runs["2"][1] == m.source.sha256
    assert m.provenance.options["source"] == "models:/cnn@production" and m.provenance.git is None
    assert registry(capsys, "register", "pkg")[0] == 0
    rc, out, err = registry(capsys, "show", "cnn", "1.0.0")
    assert rc == 0 and f"mlflow models:/cnn@production -> models:/cnn/2 run {runs['2'][0]}" in out, out
    # when production moves back to version 1 in MLflow, reproduce still re-runs exactly version 2
    client.set_registered_model_alias("cnn", "production", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rc, out, err = registry(capsys, "reproduce", "cnn", "1.0.0", "-q")
    assert rc == 0 and "identical model bytes" in out, out + err
    # when the registry version is exported to MLflow with an alias (twice: the second finds it there)
    rc, out, err = registry(capsys, "export", "cnn", "1.0.0", "--mlflow", uri, "--mlflow-name", "cnn-edge",
                            "--alias", "edge-production")  # fmt: skip
    assert rc == 0 and out.strip() == "exported cnn 1.0.0 to MLflow as cnn-edge version 1 " \
                                      "(alias edge-production)", out + err  # fmt: skip
    rc, out, err = registry(capsys, "export", "cnn", "1.0.0", "--mlflow", uri, "--mlflow-name", "cnn-edge")
    assert rc == 0 and out.strip().endswith("version 1, already there"), out + err
    # then MLflow holds the signed package, byte-identical, with the lineage as tags
    mv = client.get_model_version_by_alias("cnn-edge", "edge-production")
    _, doc = operator.get("/api/v1/registry/models/cnn/versions/1.0.0")
    assert str(mv.version) == "1" and mv.tags["edge.package_sha256"] == doc["sha256"]
    assert mv.tags["edge.source_model_uri"] == "models:/cnn/2" and mv.tags["edge.source_run_id"] == runs["2"][0]
    assert mv.tags["edge.model_sha256"] == m.file_entry("model.onnx").sha256
    assert mv.tags["edge.source_sha256"] == runs["2"][1] and "onnxruntime" in mv.tags["edge.tools"]
    from mlflow.artifacts import download_artifacts

    got = Path(download_artifacts(artifact_uri=client.get_model_version_download_uri("cnn-edge", mv.version),
                                  dst_path=str(tmp_path / "d")))  # fmt: skip
    assert sha256_file(got / "cnn-1.0.0.erpkg") == doc["sha256"] and (got / "lineage.json").is_file()


def test_without_the_mlflow_extra_both_commands_say_which_extra_in_one_line(tmp_path):
    hidden = tmp_path / "no-mlflow" / "mlflow"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'mlflow'\", name='mlflow')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden.parent), *sys.path])}
    for args in (["convert", "models:/cnn@production", "--mlflow-uri", "sqlite:///x.db", "--profile", "x86-laptop",
                  "--calibration", str(tmp_path), "--out", str(tmp_path / "p")],
                 ["registry", "export", "cnn", "1.0.0", "--mlflow", "sqlite:///x.db"]):  # fmt: skip
        r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == ["edge-runtime: error: mlflow (needed for MLflow registries) is not "
                                                 "installed: pip install 'edge-runtime[mlflow]'"], r.stderr  # fmt: skip


def test_a_bad_models_uri_or_an_unknown_alias_is_one_line(mlflow_registry, tmp_path, capsys):
    for uri, says in (("models:/cnn", "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
                      ("models:/cnn@nope", "alias nope not found")):  # fmt: skip
        rc = main(["convert", uri, "--mlflow-uri", mlflow_registry["uri"], "--profile", "x86-laptop",
                   "--calibration", str(mlflow_registry["root"] / "calib"), "--out", str(tmp_path / "p")])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and says in err[0], err
        assert not (tmp_path / "p").exists()
