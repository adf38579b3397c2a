"""Collect every device's retained state and update status from the broker."""

from __future__ import annotations

import json
import time
from typing import Any

from edge_runtime.sync.topics import Topics


def collect(link: Any, topics: Topics, wait_s: float = 1.0) -> dict[str, dict[str, Any]]:
    """device -> {'state': ..., 'update': ...} from the retained messages (they arrive right after subscribing)."""
    out: dict[str, dict[str, Any]] = {}

    def handler(kind: str) -> Any:
        def on(topic: str, payload: bytes) -> None:
            dev = Topics.device_from(topic)
            if dev and payload:
                try:
                    out.setdefault(dev, {})[kind] = json.loads(payload)
                except ValueError:
                    return
        return on

    link.subscribe(topics.all_device_states(), handler("state"))
    link.subscribe(topics.all_update_status(), handler("update"))
    time.sleep(wait_s)
    return out


def table(devices: dict[str, dict[str, Any]]) -> str:
    rows = [f"{'device':<16} {'online':<6} {'serving':<24} {'update':<13} {'health':<24} reason"]
    for dev in sorted(devices):
        st, up = devices[dev].get("state", {}), devices[dev].get("update", {})
        h = up.get("health") or {}
        health = f"err {h.get('error_rate', 0):.1%} p95 {h.get('latency_p95_ms', 0):.1f}ms" if h else "-"
        rows.append(f"{dev:<16} {str(st.get('online', '?')):<6} {str(up.get('serving', st.get('model'))):<24} "
                    f"{up.get('state', '-'):<13} {health:<24} {up.get('reason', '')}")
    return "\n".join(rows)
