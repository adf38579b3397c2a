"""Canary rollout: update the canaries, watch their health and metrics for a window, then promote or roll back.

Steps: (1) the canaries get a signed per-device desired document and run the whole device-side update (verify,
smoke test, swap, health window); a canary that fails any of it switches back by itself. (2) For ``window_s``
the fleet watches the canaries' live reports (error rate, latency p95) and drift; crossing a threshold stops
the rollout. (3) Stopping rolls every committed canary back to the version it served before, with a signed
rollback document. (4) Otherwise every other device (or the group) gets the desired document, optionally in
``waves``: each wave must commit (a failure share above ``max_error_rate`` stops the rollout) before the next.

A device's own desired document overrides its group's, so a device that still has an older per-device document
(say, a canary of an earlier rollout) would ignore a group promotion; such devices are promoted through
per-device documents instead.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_runtime.errors import ConfigError
from edge_runtime.package.signing import Ed25519PrivateKey
from fleet.publish import Published, Registry, set_desired_many
from fleet.status import FleetWatch


class RolloutPlan(BaseModel):
    """How a rollout picks canaries, how long and how strictly it watches them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canary_percent: float | None = Field(default=None, gt=0, le=100, description="Percent of devices as canaries.")
    canary_devices: tuple[str, ...] = Field(default=(), description="Explicit canary device ids.")
    window_s: float = Field(default=30.0, ge=0, description="Seconds the committed canaries are watched.")
    max_error_rate: float = Field(default=0.05, ge=0, le=1, description="Canary error rate that stops the rollout.")
    max_latency_ms: float | None = Field(default=None, gt=0, description="Canary latency p95 that stops it.")
    stop_on_drift: bool = Field(default=True, description="Drift reported by a canary in the window stops it.")
    group: str | None = Field(default=None, description="Only devices of this group; promote via its document.")
    timeout_s: float = Field(default=180.0, gt=0, description="Time allowed for each phase's devices to finish.")
    waves: int = Field(default=1, ge=1, le=100, description="Promote the other devices in this many waves.")

    @model_validator(mode="after")
    def _one_way_to_pick(self) -> RolloutPlan:
        if (self.canary_percent is None) == (not self.canary_devices):
            raise ValueError("give either a canary percentage or a list of canary devices (exactly one)")
        return self


@dataclass
class RolloutResult:
    promoted: bool
    code: str  # promoted | partial | canary_failed | error_threshold | latency_threshold | drift | wave_failed
    reason: str
    canaries: list[str]
    states: dict[str, str] = field(default_factory=dict)
    rolled_back: list[str] = field(default_factory=list)
    canary_metrics: dict[str, float] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_canaries(devices: list[str], plan: RolloutPlan) -> list[str]:
    """The listed devices, or the first ``ceil(percent)`` of the sorted device list (at least one)."""
    if plan.canary_devices:
        unknown = sorted(set(plan.canary_devices) - set(devices))
        if unknown:
            raise ConfigError(f"canary devices {', '.join(unknown)} do not report an update status for this package")
        return list(plan.canary_devices)
    n = max(1, math.ceil(len(devices) * (plan.canary_percent or 0) / 100))
    return sorted(devices)[:n]


def split_waves(devices: list[str], waves: int) -> list[list[str]]:
    """``devices`` (sorted) in ``waves`` consecutive groups of nearly equal size, none empty."""
    ordered = sorted(devices)
    n = max(1, min(waves, len(ordered)))
    size, extra = divmod(len(ordered), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(ordered[start:end])
        start = end
    return out


def serves(status: dict[str, Any] | None, pub: Published) -> bool:
    """Whether a device's update status says it serves ``pub``'s very bytes (not only its name and version: a
    version re-published with other content is not served until the device reports that content)."""
    st = status or {}
    if st.get("serving") != f"{pub.name}-{pub.version}":
        return False
    return "serving_package_id" not in st or st["serving_package_id"] == pub.meta.package_id  # older agents


class Rollout:
    """One rollout of ``pub`` to the devices ``watch`` sees (see the module docstring for the steps)."""

    def __init__(self, link: Any, watch: FleetWatch, pub: Published, key: Ed25519PrivateKey, plan: RolloutPlan,
                 registry: Registry) -> None:
        self.link, self.watch, self.pub, self.key, self.plan = link, watch, pub, key, plan
        self.registry = registry
        self.target_key = f"{pub.name}-{pub.version}"
        self.states: dict[str, str] = {}
        self.last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------------------------- checks
    def plan_devices(self) -> tuple[list[str], list[str], dict[str, Published]]:
        """Canaries, the rest, and each canary's rollback target; raise ConfigError before anything changes."""
        devices = self.watch.devices(profile=self.pub.profile, group=self.plan.group)
        if not devices:
            where = f" in group {self.plan.group}" if self.plan.group else ""
            raise ConfigError(f"no device of profile {self.pub.profile}{where} reports an update status")
        canaries = pick_canaries(devices, self.plan)
        previous: dict[str, Published] = {}
        for d in canaries:
            serving = (self.watch.status(d) or {}).get("serving")
            if serving == self.target_key:
                continue
            prev = self.registry.find_key(str(serving))
            if prev is None:
                raise ConfigError(
                    f"canary {d} serves {serving}, which is not in the registry {self.registry.path}, so it could "
                    "not be rolled back; upload it first with `fleet publish PKG` (without --target)")
            previous[d] = prev
        rest = [d for d in devices if d not in canaries]
        return canaries, rest, previous

    # ------------------------------------------------------------------------------------- phases
    def update(self, devices: list[str], pub: Published, rollback: bool = False,
               group: str | None = None) -> dict[str, str]:
        """Send the desired document(s) and wait until each device committed, failed or rejected it."""
        todo = [d for d in devices if not serves(self.watch.status(d), pub)]
        out = {d: "committed" for d in devices if d not in todo}
        self.states.update(out)
        if not todo:
            return out
        topics = self.watch.topics
        seqs: dict[str, int] = {}
        # A device with its own desired document ignores the group's: promote it through its own document.
        own = [d for d in todo if group is None or self.watch.has_device_desired(d)]
        via_group = [d for d in todo if d not in own]
        if group is not None:  # published even when every device here has its own: it is the group's state
            doc = set_desired_many(self.link, topics, pub, [f"group:{group}"], self.key, rollback)[f"group:{group}"]
            seqs.update({d: doc.sequence for d in via_group})
        if own:
            seqs.update({d: doc.sequence for d, doc in set_desired_many(self.link, topics, pub, own, self.key,
                                                                        rollback).items()})
        done = self.watch.wait_outcomes(seqs, self.plan.timeout_s)
        out.update({d: done.get(d, "no answer") for d in todo})
        self.states.update(out)
        return out

    def canary_verdict(self, canaries: list[str], since: float) -> tuple[str, str, dict[str, float]] | None:
        """Watch the committed canaries for ``window_s``; a (code, reason, metrics) that stops the rollout."""
        deadline = time.monotonic() + self.plan.window_s
        while True:
            for d in canaries:
                st = self.watch.status(d) or {}
                if not serves(st, self.pub) or st.get("state") not in ("committed", "idle"):
                    return "canary_failed", f"canary {d} left {self.target_key}: {st.get('state')} " \
                        f"({st.get('reason', '')})", {}
            m = self.metrics(canaries, since)
            if m["inferences"] and m["error_rate"] > self.plan.max_error_rate:
                return "error_threshold", f"canary error rate {m['error_rate']:.1%} > " \
                    f"{self.plan.max_error_rate:.1%} over {m['inferences']:.0f} inferences", m
            if self.plan.max_latency_ms and m["latency_p95_ms"] > self.plan.max_latency_ms:
                return "latency_threshold", f"canary latency p95 {m['latency_p95_ms']:.1f} ms > " \
                    f"{self.plan.max_latency_ms:.1f} ms", m
            drifted = {d: f for d in canaries if (f := self.watch.drift_since(d, since))}
            if self.plan.stop_on_drift and drifted:
                return "drift", "drift on canaries: " + "; ".join(f"{d}: {', '.join(f)}" for d, f in drifted.items()), m
            left = deadline - time.monotonic()
            if left <= 0:
                self.last_metrics = m
                return None
            with self.watch.cond:
                self.watch.cond.wait(min(left, 0.25))

    def metrics(self, canaries: list[str], since: float) -> dict[str, float]:
        """Canary error rate and worst latency p95: the commit's health window plus live reports since then."""
        inferences = errors = 0.0
        p95 = 0.0
        for d in canaries:
            st = self.watch.status(d) or {}
            reports = [st.get("health") or {}] if st.get("serving") == self.target_key else []
            reports += [r for r in self.watch.live_since(d, since) if r.get("serving") == self.target_key]
            for r in reports:  # "attempts" counts failed inferences too (older devices report "inferences")
                inferences += float(r.get("attempts", r.get("inferences", 0)))
                errors += float(r.get("errors", 0))
                if r.get("inferences"):
                    p95 = max(p95, float(r.get("latency_p95_ms", 0.0)))
        rate = errors / inferences if inferences else 0.0
        return {"inferences": inferences, "errors": errors, "error_rate": rate, "latency_p95_ms": p95}

    def roll_back(self, canaries: list[str], previous: dict[str, Published]) -> list[str]:
        """Signed rollback of every canary that now serves the new version to what it served before."""
        back = [d for d in canaries if d in previous and (self.watch.status(d) or {}).get("serving") == self.target_key]
        for d in back:
            self.update([d], previous[d], rollback=True)
        return back

    def promote(self, rest: list[str]) -> str | None:
        """Update ``rest`` in ``plan.waves`` waves (the last through the group's document, if any); the reason
        a wave stopped the rollout, or None."""
        waves = split_waves(rest, self.plan.waves)
        for i, wave in enumerate(waves):
            last = i == len(waves) - 1
            out = self.update(wave, self.pub, group=self.plan.group if last else None)
            bad = sorted(d for d, st in out.items() if st != "committed")
            if not last and len(bad) > self.plan.max_error_rate * len(wave):
                return f"wave {i + 1}/{len(waves)}: {len(bad)} of {len(wave)} devices did not commit " \
                    f"({', '.join(f'{d}: {out[d]}' for d in bad[:10])})"
        return None

    # ------------------------------------------------------------------------------------- all of it
    def run(self) -> RolloutResult:
        t0 = time.monotonic()
        canaries, rest, previous = self.plan_devices()
        since = time.time()
        canary_states = self.update(canaries, self.pub)
        t_canary = time.monotonic()
        timings = {"canaries_s": t_canary - t0}
        bad = {d: s for d, s in canary_states.items() if s != "committed"}
        if bad:
            why = "; ".join(f"{d}: {s} ({(self.watch.status(d) or {}).get('reason', '')})" for d, s in bad.items())
            verdict: tuple[str, str, dict[str, float]] | None = ("canary_failed", f"canaries failed: {why}", {})
        else:
            verdict = self.canary_verdict(canaries, since)
        timings["window_s"] = time.monotonic() - t_canary
        if verdict is not None:
            code, reason, metrics = verdict
            rolled = self.roll_back(canaries, previous)
            timings["total_s"] = time.monotonic() - t0
            return RolloutResult(False, code, f"rollout stopped: {reason}", canaries, dict(self.states), rolled,
                                 metrics, timings)
        metrics = self.last_metrics
        t_promote = time.monotonic()
        stopped = self.promote(rest)
        timings["promote_s"] = time.monotonic() - t_promote
        if stopped is not None:
            timings["total_s"] = time.monotonic() - t0
            return RolloutResult(False, "wave_failed", f"rollout stopped: {stopped}", canaries, dict(self.states), [],
                                 metrics, timings)
        timings["total_s"] = time.monotonic() - t0
        ok = all(self.states.get(d) == "committed" for d in canaries + rest)
        failed = sorted(d for d in rest if self.states.get(d) != "committed")
        reason = f"promoted to {len(canaries) + len(rest)} devices" if ok else \
            f"promoted; {len(failed)} devices did not commit: {', '.join(failed[:10])}"
        return RolloutResult(ok, "promoted" if ok else "partial", reason, canaries, dict(self.states), [], metrics,
                             timings)
