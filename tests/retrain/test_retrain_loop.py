"""The whole loop with real parts: a digits classifier trained here, converted, signed and registered; two real
agents serving it on a clip that shifts (digits inverted), under a collection policy pushed to their group; drift
from both; the samples the devices chose and uploaded on their own (chunked) labelled (the data set standing in
for a person); the server's re-training run (its server killed with SIGKILL while the training command
runs, then restarted) passing its gates, reaching the canary and promoted. Then a run whose training command makes
a worse model is rejected by its gates and the fleet stays on the promoted version."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select

from fleet.server.db import tables as t
from fleet.server.db.engine import make_engine
from tests.fleet_server.conftest import cli
from tests.integration.helpers import wait_until
from tests.retrain.scenario import Scenario

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
POLICY = {
    "triggers": {"drift_devices": 2, "new_labels": 40, "min_new_labels": 40, "cooldown_s": 0},
    # latency is no yardstick on two loaded CI cores (tests/fleet_server/test_rollouts_judge.py judges it);
    # confidence is off by default for re-trained canaries (the old model is confidently wrong on inverted digits)
    "canary": {"auto": True, "canaries": ["cam-1"], "window_s": 2, "timeout_s": 120,
               "thresholds": {"max_confidence_drop": 1.0, "max_latency_ratio": 20}}}


def test_drift_to_retrained_model_on_every_device_and_a_worse_model_rejected(tmp_path):
    t0, phases = time.monotonic(), {}

    def mark(name: str) -> None:
        phases[name] = round(time.monotonic() - t0, 1)
        print(f"{phases[name]:7.1f} s  {name}", flush=True)

    s = Scenario(tmp_path, POLICY)
    server, env = s.server, s.env
    try:
        s.start()
        mark("agents serving 1.0.0")
        # when the stream shifts (inverted digits from the clip's next loop on), drift fires on both devices
        first_drift = s.shift()
        mark("drift from both")
        # then each device keeps shifted inputs under the policy (on drift, low confidence, random) and uploads them
        items = s.collected(first_drift, per_device=15)
        mark(f"{len(items)} samples uploaded by the devices")
        assert {it["reason"] for it in items} <= {"drift", "low_confidence", "random"}, items
        assert "drift" in {it["reason"] for it in items if it["ts"] >= first_drift}
        engine = make_engine(s.db)
        with engine.connect() as conn:  # every one came through the resumable chunked upload, none on request
            metas = [r[0] for r in conn.execute(select(t.samples.c.meta))]
        engine.dispose()
        assert metas and all(m["upload"] == "chunked" and m["phash"] for m in metas), metas[:3]  # phash: the policy
        # and the samples are labelled: the triggers (drift on 2 devices, 40 new labels) start a run by themselves
        s.label_uploaded()
        rid = s.first_run()
        assert {x["trigger"] for x in s.run(rid)["reasons"]} == {"drift", "new_labels"}, s.run(rid)["reasons"]
        # when the server is killed (SIGKILL) while the training command runs, and started again
        wait_until(lambda: (tmp_path / "fleet" / "retrain" / "runs" / str(rid) / "attempts").exists(), 60)
        server.kill()
        server.start()
        mark("server restarted")
        # then the run trains again, passes its gates, reaches the canary and is promoted on every device
        run = s.wait_final(rid, 240)
        events = [st["event"] for st in run["steps"]]
        assert run["state"] == "done", (run["reason"], events, run.get("gates"))
        assert events == ["create", "start", "snapshot_done", "restart", "trained", "converted", "passed",
                          "registered_auto", "promoted"], events
        assert run["attempt"] == 2 and run["candidate"] == "1.0.1"
        g = run["gates"]
        assert g["field"]["candidate"]["accuracy"] > g["field"]["parent"]["accuracy"], g
        assert g["holdout"]["candidate"]["accuracy"] >= g["holdout"]["parent"]["accuracy"] - 0.05, g
        wait_until(lambda: s.serving("1.0.1"), 60)
        mark("run 1 done, 1.0.1 everywhere")
        lineage = server.get("/api/v1/registry/models/digits/versions/1.0.1")[1]
        assert lineage["parent"] == "1.0.0" and lineage["lineage"]["dataset_snapshot"] == run["snapshot"]
        assert "train_digits.py" in lineage["lineage"]["training_command"]
        log = cli("retrain", "show", str(rid), "--log", env=env).stdout
        assert "attempt 1, mode slow" in log and "attempt 2, mode slow" in log and "trained on" in log
        # when a run's training command makes a worse model (shuffled labels), started by hand
        (tmp_path / "mode.txt").write_text("worse")
        r = cli("retrain", "--json", "run", "digits", "--note", "worse on purpose", env=env)
        assert r.returncode == 0, r.stderr
        run2 = s.wait_final(json.loads(r.stdout)["id"], 180)
        mark("run 2 ended")
        # then its gates reject it with the reason, and the fleet stays on 1.0.1
        assert run2["state"] == "rejected", (run2["reason"], run2.get("gates"))
        assert run2["parent"] == "1.0.1" and "holdout accuracy" in run2["reason"]
        model = server.get("/api/v1/registry/models/digits")[1]
        assert [v["version"] for v in model["versions"]] == ["1.0.0", "1.0.1"]
        assert model["aliases"]["production"]["version"] == "1.0.1" and s.serving("1.0.1")
    finally:
        s.stop()
