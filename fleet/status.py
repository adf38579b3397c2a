"""Watch every device's retained update status, state and drift reports; answer `fleet status` and rollouts.

:class:`FleetWatch` subscribes once and keeps the latest update status per device (plus the latest live
error/latency report and any drift seen in metric batches or drift events), so a rollout can wait on
conditions without re-subscribing or polling the broker.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from edge_runtime.sync.topics import Topics

Status = dict[str, Any]


class FleetWatch:
    """Latest view of the fleet, fed by the broker (callbacks on the link's network thread)."""

    def __init__(self, link: Any, topics: Topics) -> None:
        self.topics = topics
        self.updates: dict[str, Status] = {}
        self.states: dict[str, Status] = {}
        self.finished: dict[str, dict[int, str]] = {}  # device -> desired sequence -> committed|failed|rejected
        self.live: dict[str, list[Status]] = {}  # device -> live reports, oldest first (bounded)
        self.drift: dict[str, list[tuple[float, str]]] = {}  # device -> (unix time, feature) of drift seen
        self.device_desired: dict[str, dict[str, Any]] = {}  # device -> its retained per-device desired document
        self.cond = threading.Condition()
        self._last_new = time.monotonic()
        link.subscribe(topics.all_update_status(), self._on_update)
        link.subscribe(topics.all_device_states(), self._on_state)
        link.subscribe(topics.all_device_desired(), self._on_desired)
        link.subscribe(topics.all_metrics(), self._on_batch)
        link.subscribe(topics.all_events(), self._on_batch)

    # ------------------------------------------------------------------------------------- callbacks
    def _on_update(self, topic: str, payload: bytes) -> None:
        doc = _json(payload)
        dev = Topics.device_from(topic)
        if dev is None or doc is None:
            return
        with self.cond:
            if dev not in self.updates:
                self._last_new = time.monotonic()
            self.updates[dev] = doc
            fin = self.finished.setdefault(dev, {})
            if isinstance(doc.get("rejected_sequence"), int):
                fin[doc["rejected_sequence"]] = "rejected"
            if doc.get("state") in ("committed", "failed") and isinstance(doc.get("sequence"), int):
                fin[doc["sequence"]] = doc["state"]
            if isinstance(doc.get("live"), dict):
                reports = self.live.setdefault(dev, [])
                reports.append({**doc["live"], "at": doc.get("at", time.time()), "serving": doc.get("serving")})
                del reports[:-50]
            self._touch()

    def _on_state(self, topic: str, payload: bytes) -> None:
        doc, dev = _json(payload), Topics.device_from(topic)
        if dev is not None and doc is not None:
            with self.cond:
                self.states[dev] = doc
                self._touch()

    def _on_desired(self, topic: str, payload: bytes) -> None:
        """Per-device desired documents override the group's on the device, so a group rollout must know them."""
        dev = Topics.device_from(topic)
        if dev is None:
            return
        env = _json(payload)
        doc = _json(env["document"].encode()) if env and isinstance(env.get("document"), str) else None
        with self.cond:
            if doc is None:
                self.device_desired.pop(dev, None)
            else:
                self.device_desired[dev] = doc
            self._touch()

    def _on_batch(self, topic: str, payload: bytes) -> None:
        """Metric batches and events from the outbox: remember drift (a drift event, or a drifted feature)."""
        doc, dev = _json(payload), Topics.device_from(topic)
        if dev is None or doc is None:
            return
        found: list[tuple[float, str]] = []
        for rec in doc.get("records", []) if isinstance(doc.get("records"), list) else []:
            data = rec.get("data") if isinstance(rec, dict) else None
            if not isinstance(data, dict):
                continue
            ts = float(data.get("ts", rec.get("ts", time.time())))
            if data.get("type") == "drift":
                found.append((ts, str(data.get("feature", "?"))))
            drift = data.get("drift")
            if isinstance(drift, dict):
                found += [(ts, f) for f, s in drift.items() if isinstance(s, dict) and s.get("drifted")]
        if found:
            with self.cond:
                self.drift.setdefault(dev, []).extend(found)
                self._touch()

    def _touch(self) -> None:
        self.cond.notify_all()

    # ------------------------------------------------------------------------------------- queries
    def settle(self, quiet_s: float = 0.3, max_s: float = 3.0) -> None:
        """Wait until no new device has shown up for ``quiet_s`` (the retained statuses are in), at most ``max_s``."""
        deadline = time.monotonic() + max_s
        time.sleep(min(quiet_s, max_s))
        while time.monotonic() < deadline and time.monotonic() - self._last_new < quiet_s:
            time.sleep(0.05)

    def devices(self, profile: str | None = None, group: str | None = None) -> list[str]:
        """Devices that run the update agent, optionally only those of a profile and group."""
        with self.cond:
            out = []
            for dev, st in self.updates.items():
                if profile is not None and st.get("profile") not in (None, profile):
                    continue
                if group is not None and group not in (st.get("groups") or []):
                    continue
                out.append(dev)
            return sorted(out)

    def has_device_desired(self, device: str) -> bool:
        """Whether ``device`` has its own retained desired document (which overrides any group document)."""
        with self.cond:
            return device in self.device_desired

    def status(self, device: str) -> Status | None:
        with self.cond:
            return self.updates.get(device)

    def wait_outcomes(self, seqs: dict[str, int], timeout: float) -> dict[str, str]:
        """device -> 'committed' | 'failed' | 'rejected' for each device that finished its document's sequence.

        Every status message counts, not just the latest: a terminal status may be followed at once by a live
        report that replaces it as the retained message.
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = {d: o for d, seq in seqs.items() if (o := self.finished.get(d, {}).get(seq)) is not None}
                left = deadline - time.monotonic()
                if len(found) == len(seqs) or left <= 0:
                    return found
                self.cond.wait(min(left, 0.5))

    def live_since(self, device: str, since: float) -> list[Status]:
        with self.cond:
            return [r for r in self.live.get(device, []) if r.get("at", 0) >= since]

    def drift_since(self, device: str, since: float) -> list[str]:
        with self.cond:
            return sorted({f for ts, f in self.drift.get(device, []) if ts >= since})

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """device -> {'state': ..., 'update': ...}, as `fleet status --json` prints it."""
        with self.cond:
            out: dict[str, dict[str, Any]] = {}
            for dev, st in self.states.items():
                out.setdefault(dev, {})["state"] = st
            for dev, up in self.updates.items():
                out.setdefault(dev, {})["update"] = up
            for dev, doc in out.items():  # a device's own document overrides its groups'
                groups = (doc.get("state") or {}).get("groups") or []
                doc["follows"] = "device" if dev in self.device_desired else \
                    ("group:" + ",".join(groups) if groups else "-")
            return out


def _json(payload: bytes) -> dict[str, Any] | None:
    if not payload:
        return None
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def collect(link: Any, topics: Topics, wait_s: float = 1.0) -> dict[str, dict[str, Any]]:
    """device -> {'state': ..., 'update': ...} from the retained messages."""
    watch = FleetWatch(link, topics)
    watch.settle(quiet_s=min(0.3, wait_s), max_s=wait_s)
    return watch.snapshot()


def table(devices: dict[str, dict[str, Any]]) -> str:
    rows = [f"{'device':<16} {'online':<6} {'serving':<24} {'update':<13} {'follows':<14} {'health':<24} reason"]
    for dev in sorted(devices):
        st, up = devices[dev].get("state", {}), devices[dev].get("update", {})
        h = up.get("live") or up.get("health") or {}
        health = f"err {h.get('error_rate', 0):.1%} p95 {h.get('latency_p95_ms', 0):.1f}ms" if h else "-"
        rows.append(f"{dev:<16} {str(st.get('online', '?')):<6} {str(up.get('serving', st.get('model'))):<24} "
                    f"{up.get('state', '-'):<13} {devices[dev].get('follows', '-'):<14} {health:<24} "
                    f"{up.get('reason', '')}")
    return "\n".join(rows)
