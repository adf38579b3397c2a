"""Test harness: real mosquitto, real packages, real pipelines; devices in-process or as separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from edge_runtime.package import load_private_key
from edge_runtime.sync.mqtt import MqttLink, MqttSettings
from edge_runtime.sync.topics import Topics
from fleet.publish import Published, set_desired, upload

REPO = Path(__file__).resolve().parents[2]


class FleetSide:
    """The fleet's MQTT connection plus a record of every update status seen, per device."""

    def __init__(self, port: int, key_path: Path, name: str = "fleet") -> None:
        self.topics = Topics()
        self.link = MqttLink(MqttSettings(host="127.0.0.1", port=port, device_id=name, max_payload=1 << 20),
                             will=False, announce=False)
        self.key = load_private_key(key_path)
        self.statuses: dict[str, list[dict[str, Any]]] = {}
        self.cond = threading.Condition()
        self.link.subscribe(self.topics.all_update_status(), self._on_status)
        self.link.start()
        assert self.link.wait_connected(10)

    def _on_status(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        doc = json.loads(payload)
        with self.cond:
            self.statuses.setdefault(doc["device"], []).append(doc)
            self.cond.notify_all()

    def upload(self, pkg: Path, chunk_size: int = 64 * 1024) -> Published:
        return upload(self.link, self.topics, pkg, chunk_size)

    def desire(self, pub: Published, target: str, rollback: bool = False, key: Any = None) -> Any:
        return set_desired(self.link, self.topics, pub, target, key or self.key, rollback=rollback)

    def last(self, device: str) -> dict[str, Any] | None:
        with self.cond:
            seen = self.statuses.get(device)
            return seen[-1] if seen else None

    def wait_for(self, device: str, pred: Any, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for doc in reversed(self.statuses.get(device, [])):
                    if pred(doc):
                        return doc
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(d["state"], d["code"], d["reason"]) for d in self.statuses.get(device, [])][-8:]
                    raise AssertionError(f"{device}: condition not met in {timeout} s; last statuses {seen}")
                self.cond.wait(left)

    def states(self, device: str) -> list[str]:
        with self.cond:
            out: list[str] = []
            for d in self.statuses.get(device, []):
                if not out or out[-1] != d["state"]:
                    out.append(d["state"])
            return out

    def clear(self, device: str) -> None:
        with self.cond:
            self.statuses[device] = []

    def close(self) -> None:
        self.link.stop()


def device_config(tmp: Path, device: str, port: int, pub_key: Path, initial: Path, top: dict[str, Any] | None = None,
                  **update: Any) -> Path:
    """An agent config file (``top``: more top-level keys, e.g. source and source_options; the rest: update)."""
    cfg = {
        "device_id": device, "profile": "x86-laptop", "state_dir": str(tmp / device), "trusted_keys": [str(pub_key)],
        "groups": update.pop("groups", []), "initial_package": str(initial), "fps": 30,
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        # latency limits are generous: these tests are about states and errors, not speed, on a loaded CI machine
        "update": {"smoke_budget_ms": 2000, **update,
                   "health": {"window_s": 1.0, "min_inferences": 5, "latency_p95_ms": 2000,
                              **update.get("health", {})}},
        **(top or {}),
    }  # fmt: skip
    path = tmp / f"{device}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def spawn_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "-v", "agent", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)


class InProcessDevice:
    """`edge-runtime agent`'s own wiring (``build_agent``) run in this process, for faults injected by replacing
    one method of the real pipeline or agent. Covers what needs the objects at hand: an error counter that breaks,
    a swap that raises, disk-full injected into the transfer; everything else runs in real agent processes."""

    def __init__(self, config: Path) -> None:
        from edge_runtime.commands.agent import load_config

        self.cfg = load_config(config)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.parts: Any = None
        self.error: BaseException | None = None
        self.ready = threading.Event()

    @property
    def pipeline(self) -> Any:
        return self.parts.pipeline if self.parts is not None else None

    @property
    def agent(self) -> Any:
        return self.parts.agent if self.parts is not None else None

    def _run(self) -> None:
        from edge_runtime.commands.agent import build_agent

        try:
            self.parts = build_agent(self.cfg)
            self.parts.start()
            self.ready.set()
            try:
                self.parts.serve()
            finally:
                self.parts.close()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
            self.ready.set()

    def start(self) -> InProcessDevice:
        self.thread.start()
        assert self.ready.wait(30)
        if self.error:
            raise self.error
        return self

    def stop(self) -> Any:
        if self.pipeline is not None:
            self.pipeline.stop()
        self.thread.join(15)
        if self.error:
            raise self.error
        return self.pipeline.stats() if self.pipeline else None
