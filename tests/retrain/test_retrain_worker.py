"""Training on another machine: the real `fleet serve` with a policy whose training runs on a worker, labels imported
from class folders, a run started by hand with the CLI, `edge-runtime retrain worker --once` claiming it, training
and uploading; the candidate passes its gates and waits for an operator, who approves it. And a teacher model
labels the samples nobody labelled, its labels marked as the teacher's."""

from __future__ import annotations

import hashlib
import json
import time

import cv2
import pytest
from sqlalchemy import insert

from fleet.server.db import tables as t
from tests.fleet_server.conftest import FleetServer, add_user, cli
from tests.integration.helpers import wait_until
from tests.mqtt_broker import Mosquitto
from tests.retrain import digits as D

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def _device_samples(data_dir, db: str, frames) -> None:
    """Samples as a device's upload leaves them (content-addressed file plus row), without labels."""
    from fleet.server.db.engine import make_engine

    engine = make_engine(db)
    with engine.begin() as conn:
        for k, f in enumerate(frames):
            data = cv2.imencode(".png", f)[1].tobytes()
            sha = hashlib.sha256(data).hexdigest()
            path = data_dir / "samples" / sha[:2] / f"{sha}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            conn.execute(insert(t.samples).values(device="cam-7", sample_id=f"s{k:02d}", ts=time.time(),
                                                  received=time.time(), sha256=sha, bytes=len(data), ext="png",
                                                  reason="low_confidence", confidence=0.3, label=None, meta={}))
    engine.dispose()


def _review_in_browser(server: FleetServer, rid: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tests.fleet_server.test_dashboard_browser import _browser

    browser = _browser()
    try:
        browser.get(server.url + "/login")
        browser.find_element(By.ID, "username").send_keys("olga")
        browser.find_element(By.ID, "password").send_keys("correct-horse")
        browser.find_element(By.ID, "login").click()
        wait_until(lambda: not browser.current_url.endswith("/login"), 20)  # the session cookie is set
        browser.get(server.url + f"/retrain/{rid}")
        assert browser.find_element(By.ID, "state").text == "failed"
        assert "holdout" in browser.find_element(By.ID, "gates").text
        browser.get(server.url + "/labels")
        browser.switch_to.active_element.send_keys("3")  # the first sample has focus: class 3, focus moves on
        browser.switch_to.active_element.send_keys("c")  # the second: confirm what it shows
        browser.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
        browser.find_element(By.ID, "save").click()
        assert "2 labels saved" in browser.find_element(By.ID, "flash").text
    finally:
        browser.quit()


def test_a_worker_trains_a_run_that_waits_for_approval(tmp_path):
    w = D.build_world(tmp_path, {"canary": {"auto": False}})
    pol = (tmp_path / "retrain.yaml").read_text().replace("timeout_s: 300", "timeout_s: 300\n  where: worker")
    (tmp_path / "retrain.yaml").write_text(pol)
    (tmp_path / "mode.txt").write_text("good")
    imgs, y = D.digits()
    # labelled shifted samples arrive as an import: a folder per class
    D.write_images(tmp_path / "import", [D.frame(imgs[i], inverted=True) for i in range(900, 1020)], list(y[900:1020]))
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    broker = Mosquitto(tmp_path / "broker").start()
    server = FleetServer(broker.port, db, tmp_path / "fleet", extra=("--operator-key", str(w["priv"]),
                                                                       "--retrain", str(tmp_path / "retrain.yaml")))
    server.token = add_user(db, "olga", "operator")
    env = {"EDGE_FLEET_TOKEN": server.token, "EDGE_FLEET_SERVER": server.url}
    try:
        server.start()
        assert cli("registry", "register", str(tmp_path / "pkg"), env=env).returncode == 0
        r = cli("retrain", "import", "folders", str(tmp_path / "import"), env=env)
        assert r.returncode == 0 and r.stdout.strip() == "120 labels imported", r.stderr
        # when an operator starts a run by hand, the server snapshots the data and leaves training to a worker
        r = cli("retrain", "--json", "run", "digits", "--note", "new camera angle", env=env)
        assert r.returncode == 0, r.stderr
        rid = json.loads(r.stdout)["id"]
        wait_until(lambda: server.get(f"/api/v1/retrain/runs/{rid}")[1]["state"] == "training", 60)
        time.sleep(1)
        assert server.get(f"/api/v1/retrain/runs/{rid}")[1]["worker"] is None  # nothing trains it on the server
        worker = cli("retrain", "worker", "--once", "--name", "gpu-box", "--work-dir", str(tmp_path / "w"), env=env)
        assert worker.returncode == 0, worker.stderr
        assert f"run {rid}: exit 0" in worker.stderr
        # then the candidate is converted with the parent's recipe, passes its gates and waits for approval
        wait_until(lambda: server.get(f"/api/v1/retrain/runs/{rid}")[1]["state"] not in
                   ("training", "converting", "gating", "registering"), 120)
        run = server.get(f"/api/v1/retrain/runs/{rid}")[1]
        assert run["state"] == "awaiting_approval", (run["reason"], run.get("gates"))
        assert run["worker"] == "gpu-box" and run["reasons"][0] == {"trigger": "by_hand", "user": "olga",
                                                                    "note": "new camera angle"}
        assert run["gates"]["field"]["candidate"]["accuracy"] > run["gates"]["field"]["parent"]["accuracy"]
        shown = cli("retrain", "show", str(rid), env=env).stdout
        assert "awaiting_approval" in shown and "gate holdout: passed" in shown
        assert "trained on" in cli("retrain", "show", str(rid), "--log", env=env).stdout
        version = server.get("/api/v1/registry/models/digits/versions/1.0.1")[1]
        assert version["parent"] == "1.0.0" and version["lineage"]["dataset_snapshot"] == run["snapshot"]
        recipe = version["lineage"]["recipe"]
        assert recipe["options"]["precision"] == "float32" and recipe["options"]["version"] == "1.0.1"
        assert recipe["options"]["calibration"].endswith("calibration")  # the snapshot's samples calibrated it
        # when the operator approves, the run moves to its canary (this fleet has no devices: it says so)
        r = cli("retrain", "approve", str(rid), env=env)
        assert r.returncode == 0 and r.stdout.strip() == f"run {rid}: canary", r.stderr
        wait_until(lambda: server.get(f"/api/v1/retrain/runs/{rid}")[1]["state"] == "failed", 30)
        assert "no known devices" in server.get(f"/api/v1/retrain/runs/{rid}")[1]["reason"]
        r = cli("retrain", "cancel", str(rid), env=env)
        assert r.returncode == 2 and "not possible now" in r.stderr
        # a run waiting for a worker is cancelled; the next claim finds nothing
        r = cli("retrain", "--json", "run", "digits", env=env)
        rid2 = json.loads(r.stdout)["id"]
        wait_until(lambda: server.get(f"/api/v1/retrain/runs/{rid2}")[1]["state"] == "training", 60)
        assert cli("retrain", "cancel", str(rid2), env=env).stdout.strip() == f"run {rid2}: cancelled"
        assert server.request("POST", "/api/v1/retrain/claim?worker=gpu-box")[1] == {"run": None}
        r = cli("retrain", "import", "csv", str(tmp_path / "missing.csv"), env=env)
        assert r.returncode == 2 and "cannot read" in r.stderr
        # and a teacher (here the float source model) labels the samples nobody labelled, marked as the teacher's
        _device_samples(tmp_path / "fleet", db, [D.frame(imgs[i]) for i in range(1020, 1030)])
        r = cli("retrain", "teacher", "digits", str(tmp_path / "digits.onnx"), "--min-confidence", "0.5", env=env)
        assert r.returncode == 0, r.stderr
        page = server.get("/api/v1/labels?limit=500")[1]["items"]
        taught = [i for i in page if i["device"] == "cam-7"]
        assert len(taught) == 10 and all(i["origin"] in ("teacher", None) for i in taught)
        marked = [i["labels"]["teacher"] for i in taught if i["origin"] == "teacher"]
        assert len(marked) >= 8 and all(0.5 <= m["confidence"] <= 1 for m in marked), taught
        right = sum(i["labels"]["teacher"]["label"] == str(y[1020 + k]) for k, i in enumerate(
            sorted(taught, key=lambda i: i["sample_id"])) if i["origin"] == "teacher")
        assert right >= 0.8 * len(marked)
        assert all(i["origin"] == "import" for i in page if i["device"] == "import")  # imports untouched
        # and in the dashboard a person reviews them with the keyboard: a number key sets a class, c confirms
        _review_in_browser(server, rid)
        after = {i["sample_id"]: i for i in server.get("/api/v1/labels?limit=500")[1]["items"]
                 if i["device"] == "cam-7"}
        newest = [i["sample_id"] for i in page if i["device"] == "cam-7"][:2]
        assert after[newest[0]]["origin"] == "person" and after[newest[0]]["label"] == "3"
        assert after[newest[0]]["labels"]["teacher"] == taught[0]["labels"].get("teacher")  # kept, marked
        confirmed = after[newest[1]]
        assert confirmed["origin"] == "person" and confirmed["label"] == (taught[1]["label"])
    finally:
        server.stop()
        broker.stop()
