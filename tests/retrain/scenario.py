"""The re-training scenario with real parts, shared by tests/retrain/test_retrain_loop.py and
benchmarks/retrain_figures.py: a broker, the real `fleet serve` with retrain.yaml, two real agents in group lobby
looping over a digits clip that shifts (inverted digits), a signed collection policy pushed to the group before they
start (the devices then keep and upload samples on their own, chunked and resumable), labels from the data set."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tests.fleet_server.conftest import FleetServer, add_user, cli
from tests.integration.helpers import stop_all, wait_until
from tests.mqtt_broker import Mosquitto
from tests.retrain import digits as D
from tests.update.harness import device_config, spawn_agent

DEVICES = ("cam-1", "cam-2")
# the device opts in to uploads and keeps nothing by its own rules: the pushed policy decides what is kept
MONITOR = {"period_s": 0.5,
           "drift": {"reference": "package", "input_every": 1, "window": 20, "min_samples": 10, "every_samples": 5},
           "samples": {"directory": "samples", "low_confidence": None, "random_rate": 0.0, "min_interval_s": 0.0,
                       "seed": 1, "upload": True}}
# The group's collection policy (PUT /api/v1/policies/groups/lobby, signed by the server): after a drift event the
# next frames, then low-confidence inputs and a random slice (the old model calls most inverted digits "2"); a
# per-class quota against that bias, near-duplicates (the clip loops) suppressed, a bandwidth cap far above need.
COLLECT = {"upload": True, "on_drift": {"seconds": 30, "frames": 120}, "low_confidence": 0.9, "random_rate": 0.05,
           "class_quota": 50, "quota_period": "hour", "dedup": {"max_distance": 2, "window": 512},
           "max_disk_bytes": 8 << 20, "upload_limits": {"bytes_per_s": 256 << 10, "chunk_bytes": 16 << 10}}


class Scenario:
    def __init__(self, tmp: Path, policy_update: dict[str, Any]) -> None:
        self.tmp = tmp
        self.w = D.build_world(tmp, policy_update)
        self.db = f"sqlite:///{tmp / 'fleet.db'}"
        self.broker = Mosquitto(tmp / "broker").start()
        self.server = FleetServer(self.broker.port, self.db, tmp / "fleet", extra=(
            "--operator-key", str(self.w["priv"]), "--retrain", str(tmp / "retrain.yaml")))
        self.server.token = add_user(self.db, "olga", "operator")
        self.env = {"EDGE_FLEET_TOKEN": self.server.token, "EDGE_FLEET_SERVER": self.server.url}
        self.clip = D.write_clip(tmp / "clip.avi", self.w["normal"][:200])
        self.agents: list[Any] = []

    def start(self) -> None:
        """Server up, 1.0.0 registered with its recipe, both agents serving it on the normal clip."""
        self.server.start()
        r = cli("registry", "register", str(self.tmp / "pkg"), env=self.env)
        assert r.returncode == 0, r.stderr
        code, body = self.server.request("PUT", "/api/v1/policies/groups/lobby", COLLECT)
        assert code == 202 and body["scope"] == "group:lobby", body
        for dev in DEVICES:
            cfg = device_config(self.tmp, dev, self.broker.port, self.w["pub"], self.tmp / "pkg",
                                {"source": str(self.clip), "source_options": {"loop": True, "fps_limit": 20},
                                 "monitoring": {"monitor": MONITOR}}, groups=["lobby"], live_report_s=1)
            self.agents.append(spawn_agent(cfg, self.tmp / f"{dev}.log"))
        wait_until(lambda: self.serving("1.0.0"), 90)

    def serving(self, version: str) -> bool:
        for dev in DEVICES:
            code, d = self.server.get(f"/api/v1/devices/{dev}")
            if code != 200 or d.get("version") != version or d.get("update_state") not in ("committed", "idle", None):
                return False
        return True

    def drift_events(self) -> list[dict[str, Any]]:
        return self.server.get("/api/v1/events?type=drift&limit=1000")[1]["items"]

    def shift(self) -> float:
        """Inverted digits from the clip's next loop on; returns the first drift event's time once both drift."""
        D.write_clip(self.clip, self.w["shifted"])
        wait_until(lambda: len({e["device"] for e in self.drift_events()}) == len(DEVICES), 90)
        return min(e["ts"] for e in self.drift_events())

    def samples(self) -> list[dict[str, Any]]:
        return self.server.get("/api/v1/samples?limit=500")[1]["items"]

    def collected(self, since: float, per_device: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until the devices' own uploads hold ``per_device`` samples of each device kept since ``since``."""
        def enough() -> list[dict[str, Any]] | None:
            items = self.samples()
            new = [it for it in items if (it["ts"] or 0) >= since]
            return items if all(sum(it["device"] == d for it in new) >= per_device for d in DEVICES) else None

        return wait_until(enough, timeout)

    def label_uploaded(self) -> list[dict[str, Any]]:
        """Each uploaded sample gets the data set's label of the frame it shows (a person would say the same)."""
        items = self.samples()
        out = []
        for it in items:
            code, content = self.server.get(f"/api/v1/samples/{it['device']}/{it['sample_id']}/content")
            assert code == 200
            frame = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
            out.append({"device": it["device"], "sample_id": it["sample_id"],
                        "label": D.CLASSES[D.match_label(frame, self.w["refs"], self.w["ref_labels"])]})
        code, body = self.server.request("POST", "/api/v1/labels", {"origin": "person", "items": out})
        assert code == 200, body
        return items

    def run(self, rid: int) -> dict[str, Any]:
        return self.server.get(f"/api/v1/retrain/runs/{rid}")[1]

    def first_run(self, timeout: float = 30) -> int:
        return wait_until(lambda: (items := self.server.get("/api/v1/retrain/runs")[1]["items"]) and items[-1]["id"],
                          timeout)

    def wait_final(self, rid: int, timeout: float) -> dict[str, Any]:
        final = ("done", "failed", "rejected", "rolled_back", "cancelled")
        wait_until(lambda: self.run(rid)["state"] in final, timeout)
        return self.run(rid)

    def stop(self) -> None:
        stop_all(self.agents)
        self.server.stop()
        self.broker.stop()


def wait_serving(s: Scenario, version: str, timeout: float = 60) -> float:
    wait_until(lambda: s.serving(version), timeout)
    return time.time()
