"""Several device agents as separate processes (own state directories) against one real mosquitto; kill -9 of
each device in a randomly chosen update state (seeded, bounded); every device ends serving a verified model."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from tests.update.harness import FleetSide, device_config, spawn_agent

pytestmark = pytest.mark.mqtt
KILL_STATES = ["downloading", "verifying", "staged", "activating", "health_check"]


def test_kill9_in_random_states_then_consistent(tmp_path: Path, broker, ota_keys, ota_packages) -> None:
    rng = random.Random(20261127)
    devices = [f"dev-{i}" for i in range(3)]
    targets = dict(zip(devices, rng.sample(KILL_STATES, len(devices)), strict=True))
    dwell = {s: 0.6 for s in KILL_STATES}
    configs = {d: device_config(tmp_path, d, broker.port, ota_keys["pub"], ota_packages["v1"], groups=["lobby"],
                                dwell_s=dwell) for d in devices}
    procs = {d: spawn_agent(configs[d], tmp_path / f"{d}.log") for d in devices}
    fleet = FleetSide(broker.port, ota_keys["priv"])
    try:
        for d in devices:
            fleet.wait_for(d, lambda s: s["serving"] == "tiny-1.0.0", timeout=60)
        fleet.desire(fleet.upload(ota_packages["v2"]), "group:lobby")
        for d, state in targets.items():
            fleet.wait_for(d, lambda s, state=state: s["state"] == state, timeout=60)
            procs[d].send_signal(signal.SIGKILL)
            procs[d].wait(10)
            procs[d] = spawn_agent(configs[d], tmp_path / f"{d}.log")
        finals = {d: fleet.wait_for(d, lambda s: s["state"] in ("committed", "failed") and s["at"] > 0, timeout=60)
                  for d in devices}
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(15)
            except Exception:
                p.kill()
        fleet.close()
    for d, final in finals.items():  # before the swap the attempt resumes where it was; after it (activating,
        # health check) the old model serves again at boot and the attempt swaps again from staged
        assert (final["state"], final["serving"]) == ("committed", "tiny-2.0.0"), (d, targets[d], final)
