"""Sample collection figures (issue 16): samples collected versus offered, and bytes uploaded, under a policy.

    .venv/bin/python benchmarks/collection_figures.py [--frames 600] [--bytes-per-s 65536]

A stream of photos (six scenes from scikit-image, each held for 10 frames with fresh noise, brightness shifted in
the second half) goes through a real classifier package (the tests' tiny ONNX model), the device's selector
(rules, class quotas, pHash near-duplicates), redaction (downscale) and the sample store; the device's uploader
sends what was kept over a real mosquitto to an in-process fleet ingest on SQLite, within the bandwidth cap.
Printed: offered, kept by reason, skipped by cause, bytes kept, bytes sent on MQTT, samples stored on the server
and the achieved upload rate against the cap (all measured in this run).

:func:`collect_and_upload` is the reusable part: the re-training benchmark can feed it its own shifted stream.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from edge_runtime.benchmark.machine import machine_summary  # noqa: E402
from edge_runtime.monitoring.collect import CollectionPolicy  # noqa: E402
from edge_runtime.monitoring.collector import Selector  # noqa: E402
from edge_runtime.monitoring.config import SampleConfig  # noqa: E402
from edge_runtime.monitoring.redact import Redactor  # noqa: E402
from edge_runtime.monitoring.samples import SampleStore  # noqa: E402
from edge_runtime.sync.mqtt import MqttLink  # noqa: E402
from edge_runtime.sync.mqtt_settings import settings_from_url  # noqa: E402
from edge_runtime.sync.uploader import SampleUploader  # noqa: E402
from fleet.server.db import tables as t  # noqa: E402
from fleet.server.db.engine import make_engine, migrate  # noqa: E402
from fleet.server.ingest import Ingest, IngestConfig  # noqa: E402
from fleet.server.store import Store  # noqa: E402
from tests.mqtt_broker import Mosquitto  # noqa: E402

Offer = tuple[np.ndarray, float | None, str | None]  # frame (BGR), confidence, predicted label


def collect_and_upload(stream: Iterable[Offer], policy: CollectionPolicy, work: Path,
                       timeout_s: float = 300.0) -> dict[str, Any]:
    """Run ``stream`` through the device's selection, redaction and upload into a fleet store; the figures."""
    broker = Mosquitto(work / "broker").start()
    url = f"mqtt://127.0.0.1:{broker.port}"
    engine = make_engine(f"sqlite:///{work / 'fleet.db'}")
    migrate(engine)
    ingest = Ingest(Store(engine, work / "server-samples"), settings_from_url(url, "fleet-server"),
                    IngestConfig(client_id="bench-fleet"))
    ingest.start()
    link = MqttLink(settings_from_url(url, "cam-1"))
    link.start()
    samples = SampleStore(SampleConfig(directory=work / "device-samples", low_confidence=None,
                                       max_bytes=policy.max_disk_bytes, max_files=100_000))
    samples.redactor = Redactor(policy.redact) if policy.redact else None
    selector = Selector(policy, seed=0)
    uploader = SampleUploader(samples, link, "cam-1", work / "budget.json", lambda: policy.upload_limits).start()
    try:
        ingest.connected.wait(30)
        link.wait_connected(30)
        t0 = time.monotonic()
        for i, (frame, conf, label) in enumerate(stream):
            meta = selector.offer(frame, conf, label, time.time())
            if meta is not None:
                samples.put(frame, {**meta, "frame_index": i, "ts": time.time(), "redact": True, "upload": "pending"})
                samples.flush()
        samples.flush()
        uploader.wake()
        deadline = time.monotonic() + timeout_s
        while samples.pending() and time.monotonic() < deadline:
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        time.sleep(0.5)
        with engine.connect() as conn:
            stored, stored_bytes = conn.execute(select(func.count(), func.coalesce(func.sum(t.samples.c.bytes), 0))
                                                .select_from(t.samples)).one()
        up = uploader.stats()
        return {"offered": selector.counters["offered"], "kept": selector.counters["kept"],
                "selector": dict(selector.counters), "bytes_kept": samples.summary()["bytes"],
                "bytes_sent_mqtt": up["bytes_sent"], "chunks_sent": up["chunks_sent"],
                "chunks_resent": up["chunks_resent"], "stored_on_server": int(stored),
                "stored_bytes": int(stored_bytes), "left_pending": len(samples.pending()),
                "seconds": round(elapsed, 2), "cap_bytes_per_s": policy.upload_limits.bytes_per_s,
                "achieved_bytes_per_s": round(up["bytes_sent"] / max(elapsed, 1e-9))}  # over the whole run
    finally:
        uploader.stop()
        samples.close()
        link.stop()
        ingest.stop()
        engine.dispose()
        broker.stop()


def photo_stream(frames: int, work: Path) -> Iterable[Offer]:
    """Six scenes held 10 frames each with noise, brighter in the second half, classified by the tiny model."""
    import cv2
    from skimage import data

    from edge_runtime.api import load
    from tests.model_factory import classifier_package, factory_trust

    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
    scenes = [cv2.resize(np.ascontiguousarray(getattr(data, n)()[:, :, ::-1]), (320, 240)) for n in names]
    rng = np.random.default_rng(0)
    with load(classifier_package(work / "pkg", fmt="onnx"), trust=factory_trust()) as model:
        for i in range(frames):
            base = scenes[(i // 10) % len(scenes)].astype(np.int16) + (40 if i >= frames // 2 else 0)
            frame = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
            p = model.predict(frame)
            top = p.top
            yield frame, p.confidence, (top.label if top is not None else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--bytes-per-s", type=int, default=65536)
    args = ap.parse_args()
    policy = CollectionPolicy(upload=True, low_confidence=0.9, random_rate=0.05, class_quota=10,
                              redact=({"kind": "downscale", "max_side": 160},),  # type: ignore[arg-type]
                              upload_limits={"bytes_per_s": args.bytes_per_s})  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        figures = collect_and_upload(photo_stream(args.frames, Path(tmp)), policy, Path(tmp))
    print(json.dumps({"machine": machine_summary(), "policy": policy.model_dump(mode="json"), **figures}, indent=1))
    rate_ok = figures["achieved_bytes_per_s"] <= policy.upload_limits.bytes_per_s * 1.05
    print(f"collected {figures['kept']} of {figures['offered']} offered; {figures['stored_on_server']} stored on the "
          f"server; {figures['bytes_sent_mqtt']} bytes sent on MQTT for {figures['bytes_kept']} bytes kept; "
          f"upload rate {figures['achieved_bytes_per_s']} B/s against a cap of {policy.upload_limits.bytes_per_s} "
          f"({'ok' if rate_ok else 'MISS'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
