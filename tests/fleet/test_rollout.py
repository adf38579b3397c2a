"""`edge-runtime fleet rollout`: canaries first, a watch window, then promote, or stop and roll the canaries back.

Real mosquitto; devices are real update agents in this process: full devices (real pipeline on a 30 fps source,
real ONNX models) for health and error-rate cases, slim simulated devices (fleet.simulate) for the group path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.cli import main
from edge_runtime.errors import ConfigError
from fleet.rollout import RolloutPlan, pick_canaries
from fleet.simulate import SimDevice
from tests.update.harness import FleetSide, InProcessDevice, device_config

LIVE = {"live_report_s": 0.5}


def test_plan_takes_exactly_one_way_to_pick_canaries() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RolloutPlan()
    with pytest.raises(ValueError, match="exactly one"):
        RolloutPlan(canary_percent=10, canary_devices=("a",))
    devices = [f"d{i}" for i in range(10)]
    assert pick_canaries(devices, RolloutPlan(canary_percent=25)) == ["d0", "d1", "d2"]
    assert pick_canaries(devices, RolloutPlan(canary_percent=1)) == ["d0"]
    assert pick_canaries(devices, RolloutPlan(canary_devices=("d7", "d3"))) == ["d7", "d3"]
    with pytest.raises(ConfigError, match="x9"):
        pick_canaries(devices, RolloutPlan(canary_devices=("d1", "x9")))


def test_cli_refuses_bad_rollout_options_before_connecting(tmp_path: Path, ota_keys, ota_packages, capsys) -> None:
    base = ["fleet", "--broker", "mqtt://127.0.0.1:1", "--registry", str(tmp_path / "reg.json"), "rollout",
            str(ota_packages["v2"]), "--key", str(ota_keys["priv"])]
    assert main([*base, "--canary", "150"]) == 2
    assert "canary_percent" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --canary and --canary-devices are mutually exclusive
        main([*base, "--canary", "10", "--canary-devices", "a"])


def _cli(broker: Any, tmp_path: Path, *args: str) -> list[str]:
    return ["fleet", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--registry", str(tmp_path / "reg.json"), *args]


def _devices(tmp_path: Path, broker: Any, ota_keys: dict, initial: Path, n: int, **update: Any) -> list[Any]:
    return [InProcessDevice(device_config(tmp_path, f"cam-{i}", broker.port, ota_keys["pub"], initial,
                                          **LIVE, **update)).start() for i in range(n)]


def _first(watch: FleetSide, device: str, state: str) -> float | None:
    with watch.cond:
        return next((d["at"] for d in watch.statuses.get(device, []) if d["state"] == state), None)


@pytest.mark.mqtt
def test_rollout_promotes_after_healthy_canaries(tmp_path: Path, broker, ota_keys, ota_packages, capsys) -> None:
    watch = FleetSide(broker.port, ota_keys["priv"], name="watcher")
    devs = _devices(tmp_path, broker, ota_keys, ota_packages["v1"], 3)
    key = str(ota_keys["priv"])
    try:
        assert main(_cli(broker, tmp_path, "publish", str(ota_packages["v1"]))) == 0  # registered, for rollback
        rc = main(_cli(broker, tmp_path, "rollout", str(ota_packages["v2"]), "--key", key, "--canary-devices",
                       "cam-0", "--window", "1.5", "--json"))
        res = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    finally:
        stats = [d.stop() for d in devs]
        watch.close()
    assert rc == 0 and res["code"] == "promoted", res
    assert res["states"] == {"cam-0": "committed", "cam-1": "committed", "cam-2": "committed"}
    assert [s.version for s in stats] == ["2.0.0"] * 3 and sum(s.errors for s in stats) == 0
    # the canary committed and was watched (live inferences counted) before anyone else started downloading
    assert res["canary_metrics"]["inferences"] > 0 and res["canary_metrics"]["error_rate"] == 0
    canary_done = _first(watch, "cam-0", "committed")
    others_start = [_first(watch, d, "downloading") for d in ("cam-1", "cam-2")]
    assert canary_done is not None and all(t is not None and t > canary_done for t in others_start)


@pytest.mark.mqtt
def test_canary_failing_health_stops_rollout(tmp_path: Path, broker, ota_keys, ota_packages, capsys) -> None:
    watch = FleetSide(broker.port, ota_keys["priv"], name="watcher")
    devs = _devices(tmp_path, broker, ota_keys, ota_packages["v1"], 2)
    try:
        assert main(_cli(broker, tmp_path, "publish", str(ota_packages["v1"]))) == 0
        rc = main(_cli(broker, tmp_path, "rollout", str(ota_packages["nan"]), "--key", str(ota_keys["priv"]),
                       "--canary", "50", "--window", "1", "--json"))
        res = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    finally:
        stats = [d.stop() for d in devs]
        watch.close()
    assert rc == 1 and res["code"] == "canary_failed" and res["canaries"] == ["cam-0"], res
    assert "unhealthy" in res["reason"] or "health window failed" in res["reason"]
    # the canary switched back by itself; the other device never heard of the package
    assert watch.states("cam-0")[-3:] == ["health_check", "rolling_back", "failed"]
    assert "downloading" not in watch.states("cam-1")
    assert [s.version for s in stats] == ["1.0.0", "1.0.0"]


@pytest.mark.mqtt
def test_error_threshold_rolls_committed_canary_back(tmp_path: Path, broker, ota_keys, ota_packages, capsys) -> None:
    # the devices' own health window tolerates errors, so the canary commits; the fleet's threshold must stop it
    lenient = {"health": {"window_s": 0.5, "min_inferences": 3, "max_error_rate": 1.0}}
    watch = FleetSide(broker.port, ota_keys["priv"], name="watcher")
    devs = _devices(tmp_path, broker, ota_keys, ota_packages["v1"], 2, **lenient)
    try:
        assert main(_cli(broker, tmp_path, "publish", str(ota_packages["v1"]))) == 0
        rc = main(_cli(broker, tmp_path, "rollout", str(ota_packages["nan"]), "--key", str(ota_keys["priv"]),
                       "--canary-devices", "cam-1", "--window", "5", "--max-error-rate", "0.05", "--json"))
        res = json.loads(capsys.readouterr().out.split("\n", 1)[1])
        back = watch.wait_for("cam-1", lambda d: d["state"] == "committed" and d["serving"] == "tiny-1.0.0")
    finally:
        stats = [d.stop() for d in devs]
        watch.close()
    assert rc == 1 and res["code"] == "error_threshold" and res["rolled_back"] == ["cam-1"], res
    assert res["canary_metrics"]["error_rate"] > 0.05
    assert back["rollback"] is True  # a signed, explicit rollback document brought the canary back
    assert "downloading" not in watch.states("cam-0")
    assert [s.version for s in stats] == ["1.0.0", "1.0.0"]


@pytest.mark.mqtt
def test_group_rollout_with_simulated_devices(tmp_path: Path, broker, ota_keys, ota_packages, capsys) -> None:
    sims = [SimDevice(f"sim-{i}", tmp_path / f"sim-{i}", broker.port, [ota_keys["pub"]], ota_packages["v1"],
                      groups=("lobby",) if i < 4 else ()).start() for i in range(5)]
    try:
        assert main(_cli(broker, tmp_path, "publish", str(ota_packages["v1"]))) == 0
        rc = main(_cli(broker, tmp_path, "rollout", str(ota_packages["v2"]), "--key", str(ota_keys["priv"]),
                       "--canary", "25", "--group", "lobby", "--window", "0.2", "--json"))
        res = json.loads(capsys.readouterr().out.split("\n", 1)[1])
        serving = {d.agent.s.device_id: d.agent.serving for d in sims}
    finally:
        for d in sims:
            d.stop()
    assert rc == 0 and res["canaries"] == ["sim-0"], res
    assert serving == {"sim-0": "tiny-2.0.0", "sim-1": "tiny-2.0.0", "sim-2": "tiny-2.0.0", "sim-3": "tiny-2.0.0",
                       "sim-4": "tiny-1.0.0"}  # sim-4 is not in the group


@pytest.mark.mqtt
def test_live_error_reports_stop_rollout(tmp_path: Path, broker, ota_keys, ota_packages, capsys) -> None:
    # the device commits at once (no health window); only its live reports show v2 failing half its inferences
    quick = {"window_s": 0, "min_inferences": 0}
    sims = [SimDevice(f"sim-{i}", tmp_path / f"sim-{i}", broker.port, [ota_keys["pub"]], ota_packages["v1"],
                      rate_hz=40, error_rates={"2.0.0": 0.5}, health=quick, live_report_s=0.3).start()
            for i in range(2)]
    try:
        assert main(_cli(broker, tmp_path, "publish", str(ota_packages["v1"]))) == 0
        rc = main(_cli(broker, tmp_path, "rollout", str(ota_packages["v2"]), "--key", str(ota_keys["priv"]),
                       "--canary-devices", "sim-0", "--window", "10", "--json"))
        res = json.loads(capsys.readouterr().out.split("\n", 1)[1])
        serving = [d.agent.serving for d in sims]
    finally:
        for d in sims:
            d.stop()
    assert rc == 1 and res["code"] == "error_threshold" and res["rolled_back"] == ["sim-0"], res
    assert res["canary_metrics"]["error_rate"] > 0.05 and "error rate" in res["reason"]
    assert serving == ["tiny-1.0.0", "tiny-1.0.0"]


def test_split_waves_keeps_every_device_once_in_nearly_equal_waves() -> None:
    from fleet.rollout import split_waves

    devs = [f"d{i}" for i in range(7)]
    waves = split_waves(list(reversed(devs)), 3)
    assert waves == [["d0", "d1", "d2"], ["d3", "d4"], ["d5", "d6"]]
    assert split_waves(devs[:2], 5) == [["d0"], ["d1"]] and split_waves([], 3) == [[]]


@pytest.mark.mqtt
def test_group_rollout_promotes_a_device_whose_own_older_document_overrides_the_group(
        tmp_path: Path, broker, ota_keys, ota_packages, capsys) -> None:
    """sim-2 still has a per-device document (v1, from an earlier `fleet publish --target`): it would ignore the
    group's v2 document and never answer; the rollout promotes it through its own document instead."""
    sims = [SimDevice(f"sim-{i}", tmp_path / f"sim-{i}", broker.port, [ota_keys["pub"]], ota_packages["v1"],
                      groups=("lobby",)).start() for i in range(4)]
    try:
        key = str(ota_keys["priv"])
        assert main(_cli(broker, tmp_path, "publish", str(ota_packages["v1"]), "--target", "sim-2", "--key", key)) == 0
        capsys.readouterr()
        rc = main(_cli(broker, tmp_path, "rollout", str(ota_packages["v2"]), "--key", key, "--canary-devices",
                       "sim-0", "--group", "lobby", "--window", "0.2", "--timeout", "60", "--json"))
        res = json.loads(capsys.readouterr().out)
        serving = {d.agent.s.device_id: d.agent.serving for d in sims}
    finally:
        for d in sims:
            d.stop()
    assert rc == 0 and res["code"] == "promoted", res
    assert set(serving.values()) == {"tiny-2.0.0"} and res["states"]["sim-2"] == "committed"


@pytest.mark.mqtt
def test_rollout_in_waves_starts_a_wave_only_after_the_previous_committed(tmp_path: Path, broker, ota_keys,
                                                                         ota_packages, capsys) -> None:
    watch = FleetSide(broker.port, ota_keys["priv"], name="watcher")
    sims = [SimDevice(f"sim-{i}", tmp_path / f"sim-{i}", broker.port, [ota_keys["pub"]], ota_packages["v1"]).start()
            for i in range(5)]
    try:
        assert main(_cli(broker, tmp_path, "publish", str(ota_packages["v1"]))) == 0
        rc = main(_cli(broker, tmp_path, "rollout", str(ota_packages["v2"]), "--key", str(ota_keys["priv"]),
                       "--canary-devices", "sim-0", "--waves", "2", "--window", "0.2", "--json"))
        res = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    finally:
        for d in sims:
            d.stop()
        watch.close()
    assert rc == 0 and res["code"] == "promoted" and set(res["states"].values()) == {"committed"}, res
    wave1_done = max(_first(watch, d, "committed") for d in ("sim-1", "sim-2"))
    assert all(_first(watch, d, "downloading") > wave1_done for d in ("sim-3", "sim-4"))


@pytest.mark.mqtt
def test_a_failing_wave_stops_the_rollout_before_the_next_wave(tmp_path: Path, broker, ota_keys, ota_packages,
                                                               capsys) -> None:
    """sim-2 (wave 1) fails its health window on v2 and switches back; wave 2 (sim-3, sim-4) is never touched."""
    sims = [SimDevice(f"sim-{i}", tmp_path / f"sim-{i}", broker.port, [ota_keys["pub"]], ota_packages["v1"],
                      **({"rate_hz": 40, "error_rates": {"2.0.0": 1.0}} if i == 2 else {})).start() for i in range(5)]
    try:
        assert main(_cli(broker, tmp_path, "publish", str(ota_packages["v1"]))) == 0
        rc = main(_cli(broker, tmp_path, "rollout", str(ota_packages["v2"]), "--key", str(ota_keys["priv"]),
                       "--canary-devices", "sim-0", "--waves", "2", "--window", "0.2", "--json"))
        res = json.loads(capsys.readouterr().out.split("\n", 1)[1])
        serving = [d.agent.serving for d in sims]
        why = sims[2].agent.machine.record.reason
    finally:
        for d in sims:
            d.stop()
    assert rc == 1 and res["code"] == "wave_failed" and "sim-2: failed" in res["reason"], res
    assert "non-finite results 100%" in why, why  # failed on its error rate, not at the end of its window
    assert serving == ["tiny-2.0.0", "tiny-2.0.0", "tiny-1.0.0", "tiny-1.0.0", "tiny-1.0.0"]
    assert "sim-3" not in res["states"] and "sim-4" not in res["states"]
