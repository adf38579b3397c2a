"""MLflow interop with a real local MLflow registry (SQLite backend, local artifact folder, no MLflow server):
`convert models:/NAME@ALIAS` takes the source from it and records the version it resolved to; the package,
registered in a real `fleet serve`, reproduces from that pinned version after the alias moved; `registry export`
puts the package in MLflow with lineage tags and an alias; without the [mlflow] extra both say so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.cli import main
from edge_runtime.fsutil import sha256_file
from edge_runtime.package import generate_keypair, load_package
from fleet.mlflow_export import EXPERIMENT
from tests.converters.conftest import build_onnx_cnn
from tests.fleet_server.conftest import FleetServer, add_user
from tests.fleet_server.test_reproduce import _digits, registry
from tests.integration.helpers import CLI
from tests.mqtt_broker import Mosquitto

pytestmark = pytest.mark.mqtt


@pytest.fixture(scope="module")
def mlflow_registry(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Model `digits` in a local MLflow registry: version 1 and 2 (other weights), alias production -> 2."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import cv2
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("training", artifact_location=(root / "artifacts").as_uri())
    # where export logs packages (else MLflow's default, ./mlruns of whichever folder first made the experiment)
    client.create_experiment(EXPERIMENT, artifact_location=(root / "exports").as_uri())
    client.create_registered_model("digits")
    digits, runs = _digits(), {}
    for seed in (0, 1):
        (root / f"seed{seed}").mkdir()
        model = build_onnx_cnn(root / f"seed{seed}" / "model.onnx", digits, seed=seed)
        run = client.create_run(exp)
        client.log_artifact(run.info.run_id, str(model), artifact_path="model")
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version("digits", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        runs[str(mv.version)] = (run.info.run_id, sha256_file(model))
    client.set_registered_model_alias("digits", "production", "2")
    (root / "calib").mkdir()
    for i, frame in enumerate(digits.frames[1200:1232]):
        cv2.imwrite(str(root / "calib" / f"{i:04d}.png"), frame)
    return {"uri": uri, "client": client, "runs": runs, "root": root}


def test_convert_from_mlflow_reproduce_after_the_alias_moved_and_export_with_lineage(mlflow_registry, tmp_path,
                                                                                      monkeypatch, capsys):  # fmt: skip
    uri, client, runs = mlflow_registry["uri"], mlflow_registry["client"], mlflow_registry["runs"]
    generate_keypair(tmp_path / "release")
    monkeypatch.chdir(tmp_path)
    # when the source is the MLflow model's production alias
    rc = main(["convert", "models:/digits@production", "--mlflow-uri", uri, "--profile", "x86-laptop",
               "--calibration", str(mlflow_registry["root"] / "calib"), "--out", "pkg", "--sign-key", "release.key",
               "--max-samples", "24", "-q"])  # fmt: skip
    assert rc == 0
    # then the package is named after the MLflow model and records the version and run the alias resolved to
    m = load_package(tmp_path / "pkg", allow_unsigned=True).manifest
    assert m.name == "digits" and m.provenance.mlflow.model_dump() == {
        "model_uri": "models:/digits@production", "name": "digits", "version": "2", "run_id": runs["2"][0]}
    assert m.provenance.inputs["source"].sha256 == runs["2"][1] == m.source.sha256
    assert m.provenance.options["source"] == "models:/digits@production" and m.provenance.git is None
    broker = Mosquitto(tmp_path / "broker").start()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    server = FleetServer(broker.port, db, tmp_path / "fleet")
    server.token = add_user(db, "olga", "operator")
    monkeypatch.setenv("EDGE_FLEET_TOKEN", server.token)
    try:
        server.start()
        monkeypatch.setenv("EDGE_FLEET_SERVER", server.url)
        assert registry(capsys, "register", "pkg")[0] == 0
        # when production moves back to version 1 in MLflow, reproduce still re-runs exactly version 2
        client.set_registered_model_alias("digits", "production", "1")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        rc, out, err = registry(capsys, "reproduce", "digits", "1.0.0", "-q")
        assert rc == 0 and "identical model bytes" in out, out + err
        # when the registry version is exported to MLflow with an alias (twice: the second finds it there)
        rc, out, err = registry(capsys, "export", "digits", "1.0.0", "--mlflow", uri, "--mlflow-name", "digits-edge",
                                "--alias", "edge-production")  # fmt: skip
        assert rc == 0 and out.strip() == "exported digits 1.0.0 to MLflow as digits-edge version 1 " \
                                          "(alias edge-production)", out + err  # fmt: skip
        rc, out, err = registry(capsys, "export", "digits", "1.0.0", "--mlflow", uri, "--mlflow-name", "digits-edge")
        assert rc == 0 and out.strip().endswith("version 1, already there"), out + err
        # then MLflow holds the signed package, byte-identical, with the lineage as tags
        mv = client.get_model_version_by_alias("digits-edge", "edge-production")
        _, doc = server.get("/api/v1/registry/models/digits/versions/1.0.0")
        assert str(mv.version) == "1" and mv.tags["edge.package_sha256"] == doc["sha256"]
        assert mv.tags["edge.source_model_uri"] == "models:/digits/2" and mv.tags["edge.source_run_id"] == runs["2"][0]
        assert mv.tags["edge.model_sha256"] == m.file_entry("model.onnx").sha256
        assert mv.tags["edge.source_sha256"] == runs["2"][1] and "onnxruntime" in mv.tags["edge.tools"]
        from mlflow.artifacts import download_artifacts

        got = Path(download_artifacts(artifact_uri=client.get_model_version_download_uri("digits-edge", mv.version),
                                      dst_path=str(tmp_path / "d")))  # fmt: skip
        assert sha256_file(got / "digits-1.0.0.erpkg") == doc["sha256"] and (got / "lineage.json").is_file()
    finally:
        server.stop()
        broker.stop()


def test_without_the_mlflow_extra_both_commands_say_which_extra_in_one_line(tmp_path):
    hidden = tmp_path / "no-mlflow" / "mlflow"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'mlflow'\", name='mlflow')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden.parent), *sys.path])}
    for args in (["convert", "models:/digits@production", "--mlflow-uri", "sqlite:///x.db", "--profile", "x86-laptop",
                  "--calibration", str(tmp_path), "--out", str(tmp_path / "p")],
                 ["registry", "export", "digits", "1.0.0", "--mlflow", "sqlite:///x.db"]):  # fmt: skip
        r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == ["edge-runtime: error: mlflow (needed for MLflow registries) is not "
                                                 "installed: pip install 'edge-runtime[mlflow]'"], r.stderr  # fmt: skip
