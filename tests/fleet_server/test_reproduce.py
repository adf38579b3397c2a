"""`edge-runtime registry reproduce` with real parts: a package converted in the test by the real `edge-runtime
convert` (relative paths, as an operator types them), registered in a real `edge-runtime fleet serve` process
(SQLite, real mosquitto), re-run from the server's recorded recipe by the real CLI entry point (in this process,
which saves an interpreter start per command): identical model bytes; then a changed calibration image and a
missing validation folder are named as the inputs that differ."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.package import generate_keypair, load_private_key
from tests.converters.conftest import DIGIT_HW, Digits, build_onnx_cnn
from tests.fleet_server.conftest import FleetServer, add_user
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


def test_a_registered_conversion_reproduces_identically_and_a_changed_input_is_named(project, monkeypatch, capsys):
    monkeypatch.chdir(project)  # relative paths, as an operator types them in the project folder
    rc = main(["convert", "cnn.onnx", "--profile", "x86-laptop", "--calibration", "calib", "--validation", "valid",
               "--out", "pkg", "--sign-key", "release.key", "--name", "digits", "--max-samples", "32", "-q"])
    assert rc == 0
    old = classifier_package(project / "old", version="0.9.0", sign_key=load_private_key(project / "release.key"))
    broker = Mosquitto(project / "broker").start()
    db = f"sqlite:///{project / 'fleet.db'}"
    server = FleetServer(broker.port, db, project / "fleet")
    monkeypatch.setenv("EDGE_FLEET_TOKEN", add_user(db, "olga", "operator"))
    try:
        server.start()
        monkeypatch.setenv("EDGE_FLEET_SERVER", server.url)
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
    finally:
        server.stop()
        broker.stop()
