"""Shadow mode: the staged model runs beside the live one on real input; the agreement rate is reported in the
status message and decides whether the swap goes ahead. Real device (pipeline on a 30 fps source), real
mosquitto, real ONNX models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.update.harness import FleetSide, InProcessDevice, device_config

pytestmark = pytest.mark.mqtt
FINAL = ("committed", "failed")


def _shadow_update(tmp_path: Path, broker, ota_keys, ota_packages, which: str, **update) -> tuple[dict, list, list]:
    fleet = FleetSide(broker.port, ota_keys["priv"])
    cfg = device_config(tmp_path, "cam-1", broker.port, ota_keys["pub"], ota_packages["v1"], shadow_s=1.0, **update)
    dev = InProcessDevice(cfg).start()
    try:
        fleet.desire(fleet.upload(ota_packages[which]), "cam-1")
        done = fleet.wait_for("cam-1", lambda d: d["state"] in FINAL)
        stats = dev.stop()
    finally:
        fleet.close()
    return done, fleet.states("cam-1"), [stats]


def test_agreeing_model_is_swapped_in_after_its_shadow_run(tmp_path: Path, broker, ota_keys, ota_packages) -> None:
    # v1's twin (same weights, new version) must agree with v1 on every live frame
    done, states, [stats] = _shadow_update(tmp_path, broker, ota_keys, ota_packages, "v1_twin")
    assert (done["state"], done["serving"]) == ("committed", "tiny-1.1.0"), done
    assert states[-8:] == ["downloading", "verifying", "staged", "shadow", "staged", "activating", "health_check",
                           "committed"]
    assert done["shadow"]["inputs"] >= 5 and done["shadow"]["agreement"] == 1.0
    assert stats.errors == 0 and stats.version == "1.1.0"


def test_disagreeing_model_is_not_swapped_in(tmp_path: Path, broker, ota_keys, ota_packages) -> None:
    # v3 has other weights: on the device's input it picks another class than v1 (it passes its own smoke test)
    done, states, [stats] = _shadow_update(tmp_path, broker, ota_keys, ota_packages, "v3", min_agreement=0.9)
    assert (done["state"], done["code"], done["serving"]) == ("failed", "shadow_disagrees", "tiny-1.0.0"), done
    assert states[-3:] == ["staged", "shadow", "failed"]
    assert done["shadow"]["inputs"] >= 5 and done["shadow"]["agreement"] < 0.9
    assert stats.version == "1.0.0" and stats.errors == 0
