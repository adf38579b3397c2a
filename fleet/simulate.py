"""A slim simulated device for fleet load tests and rollout tests.

It runs the real update agent -- signed desired documents, chunked MQTT transfer, package verification (size,
sha256 of every file, Ed25519 signature, profile, version), A/B slots, the persisted state machine and its
status messages -- with a model runtime that reads the manifest instead of running inference. An optional
feeder plays inference outcomes into the agent (each served version with its own error rate), so health windows
and live reports have data. ``python -m fleet.simulate`` runs many of them in one process.
"""

from __future__ import annotations

import argparse
import random
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edge_runtime.package.store import read_manifest
from edge_runtime.results import ClassScore, Prediction, Timings
from edge_runtime.sync.mqtt import MqttLink, MqttSettings
from edge_runtime.update.agent import UpdateAgent
from edge_runtime.update.health import HealthSettings
from edge_runtime.update.settings import UpdateSettings


class ManifestRuntime:
    """A ModelRuntime whose 'model' is the installed package's manifest: nothing is inferred."""

    def load(self, path: Path) -> Any:
        manifest = read_manifest(Path(path))[0]
        return SimpleNamespace(manifest=manifest, input_spec=manifest.inputs[0])

    def smoke(self, model: Any, budget_ms: float | None) -> tuple[bool, list[str]]:
        return True, []

    def close(self, model: Any) -> None:
        return None


class SimDevice:
    """One simulated device: its own MQTT connection, state directory and real update agent."""

    def __init__(self, device_id: str, state_dir: Path, port: int, trusted_keys: list[Path], initial: Path, *,
                 groups: tuple[str, ...] = (), host: str = "127.0.0.1", rate_hz: float = 0.0,
                 error_rates: dict[str, float] | None = None, **update: Any) -> None:
        self.link = MqttLink(MqttSettings(host=host, port=port, device_id=device_id, reconnect_min_s=0.2,
                                          reconnect_max_s=2.0))
        window = HealthSettings(window_s=1.0, min_inferences=5) if rate_hz else HealthSettings(window_s=0,
                                                                                                min_inferences=0)
        update.setdefault("health", window)
        settings = UpdateSettings(device_id=device_id, profile=update.pop("profile", "x86-laptop"),
                                  state_dir=state_dir, trusted_keys=tuple(trusted_keys), groups=groups, **update)
        self.agent = UpdateAgent(settings, self.link, ManifestRuntime())
        self.initial, self.rate_hz = initial, rate_hz
        self.error_rates = error_rates or {}
        self.rng = random.Random(device_id)
        self._feeder: threading.Thread | None = None

    def start(self) -> SimDevice:
        from edge_runtime.commands.agent import seed_initial

        if self.agent.slots.pointers().active is None:
            seed_initial(self.agent, self.initial)
        self.agent.boot()
        self.link.start()
        self.agent.start()
        if self.rate_hz > 0:
            self._feeder = threading.Thread(target=self._feed, name="sim-feeder", daemon=True)
            self._feeder.start()
        return self

    def _feed(self) -> None:
        """Play one inference outcome every 1/rate_hz seconds: a NaN score counts as an error."""
        while not self.agent.stop_event.wait(1.0 / self.rate_hz):
            version = getattr(getattr(self.agent.live, "manifest", None), "version", "")
            bad = self.rng.random() < self.error_rates.get(version, 0.0)
            score = float("nan") if bad else 0.9
            pred = Prediction("classification", classes=(ClassScore(0, score, "a"),), timings=Timings(0, 2.0, 0),
                              version=version)  # as the runtime labels its results: the health window counts those
            self.agent.observe(SimpleNamespace(prediction=pred, end_to_end_ms=2.0 + self.rng.random(), frame=None))

    def stop(self) -> None:
        self.agent.stop()
        if self._feeder is not None:
            self._feeder.join(5)
        self.link.stop()


def main(argv: list[str] | None = None) -> int:
    """Run ``--count`` simulated devices until SIGTERM/SIGINT; prints 'ready N' once all are connected."""
    p = argparse.ArgumentParser(prog="python -m fleet.simulate")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--first", type=int, default=0, help="number of the first device (ids are sim-NNNN)")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--trusted-key", type=Path, required=True)
    p.add_argument("--initial", type=Path, required=True, help="package every device starts with")
    p.add_argument("--group", action="append", default=[])
    p.add_argument("--live-report-s", type=float, default=0.0)
    args = p.parse_args(argv)
    devices = [SimDevice(f"sim-{i:04d}", args.state_dir / f"sim-{i:04d}", args.port, [args.trusted_key],
                         args.initial, groups=tuple(args.group), live_report_s=args.live_report_s,
                         transfer={"resubscribe_s": 2.0}).start()
               for i in range(args.first, args.first + args.count)]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    deadline = time.monotonic() + 60
    while not all(d.link.connected for d in devices) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"ready {sum(d.link.connected for d in devices)}", flush=True)
    stop.wait()
    for d in devices:
        d.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
