"""Canary rollout: update the canaries, watch their health for a window, then promote to all or roll back."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.sync.topics import Topics
from fleet.publish import Published, set_desired
from fleet.status import collect


@dataclass
class RolloutResult:
    promoted: bool
    canaries: list[str]
    reason: str
    states: dict[str, str] = field(default_factory=dict)


def pick_canaries(devices: list[str], percent: float | None, listed: list[str] | None) -> list[str]:
    if listed:
        return listed
    n = max(1, math.ceil(len(devices) * (percent or 10) / 100))
    return sorted(devices)[:n]


def wait_final(link: Any, topics: Topics, devices: list[str], key: str, timeout: float) -> dict[str, dict]:
    """Poll the retained update statuses until every device is committed or failed for ``key``."""
    deadline = time.monotonic() + timeout
    while True:
        seen = collect(link, topics, 0.3)
        done = {d: seen[d]["update"] for d in devices if d in seen and "update" in seen[d]
                and seen[d]["update"].get("state") in ("committed", "failed")
                and (seen[d]["update"].get("target_version") == key or seen[d]["update"].get("serving") == key)}
        if len(done) == len(devices) or time.monotonic() > deadline:
            return done


def rollout(link: Any, topics: Topics, pub: Published, devices: list[str], signing_key: Any, *,
            canary_percent: float | None = None, canary_devices: list[str] | None = None,
            window_s: float = 30.0, max_error_rate: float = 0.05, group: str | None = None,
            previous: Published | None = None, timeout: float = 120.0) -> RolloutResult:
    """Canaries first; promote when every canary committed within ``max_error_rate``; else roll them back."""
    canaries = pick_canaries(devices, canary_percent, canary_devices)
    for d in canaries:
        set_desired(link, topics, pub, d, signing_key)
    final = wait_final(link, topics, canaries, pub.version, timeout)
    time.sleep(window_s)
    bad = [d for d in canaries if final.get(d, {}).get("state") != "committed"
           or (final[d].get("health") or {}).get("error_rate", 0) > max_error_rate]
    if bad or len(bad) / max(1, len(canaries)) > max_error_rate:
        if previous is not None:
            for d in canaries:
                set_desired(link, topics, previous, d, signing_key, rollback=True)
        return RolloutResult(False, canaries, f"canaries failed: {', '.join(bad)}",
                             {d: final.get(d, {}).get("state", "no answer") for d in canaries})
    rest = [d for d in devices if d not in canaries]
    if group:
        set_desired(link, topics, pub, f"group:{group}", signing_key)
    else:
        for d in rest:
            set_desired(link, topics, pub, d, signing_key)
    final_all = wait_final(link, topics, rest, pub.version, timeout) if rest else {}
    states = {d: final_all.get(d, final.get(d, {})).get("state", "no answer") for d in devices}
    ok = all(s == "committed" for s in states.values())
    return RolloutResult(ok, canaries, "promoted to all" if ok else "promoted; some devices did not commit", states)
