"""Field accuracy on a real `edge-runtime run`: labels POSTed to /feedback for the predictions it printed are
joined with the stored predictions; accuracy shows on /metrics and in the metric records, and a drop raises an
accuracy_decay event. Every record in the outbox conforms to its schema."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

from edge_runtime.sync.outbox import Outbox, OutboxConfig
from tests.integration.helpers import CLI, get, reap, sample_value, terminate, wait_until, write_config
from tests.model_factory import trust_args
from tests.monitoring.schemas import validate
from tests.mqtt_broker import free_port
from tests.sources.media import MjpegServer


def _post(port: int, doc: object) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/feedback", data=json.dumps(doc).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310 - loopback test URL
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _printed(out: Path) -> list[dict]:
    lines = out.read_text().splitlines() if out.exists() else []
    return [json.loads(line) for line in lines[:-1]]  # the last line may be half written


def test_feedback_labels_give_field_accuracy_and_a_decay_event_on_a_real_run(tiny_onnx_package, tmp_path):
    cam = MjpegServer(fps=30).start()
    port = free_port()
    cfg = write_config(tmp_path / "device.yaml", device_id="cam-f", http={"port": port},
                       monitor={"period_s": 0.3, "field": {"window": 40, "min_labels": 20, "confirm": 1}})
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([*CLI, "run", "--package", str(tiny_onnx_package.root), *trust_args(), "--source", cam.url,
                             "--config", str(cfg), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # given 80 predictions the device printed
        rows = wait_until(lambda: len(p := _printed(out)) >= 80 and p, 90, proc)
        labels = ("a", "b", "c")
        right = [{"id": r["index"], "label": r["classes"][0]["label"]} for r in rows[:40]]
        wrong = [{"id": r["index"], "label": next(x for x in labels if x != r["classes"][0]["label"])}
                 for r in rows[40:80]]
        # when 40 correct labels arrive (plus one for a prediction never made, and a malformed one)
        code, body = _post(port, {"labels": [*right, {"id": 10**9, "label": "a"}, {"label": "a"}]})
        assert code == 200 and body["joined"] == 40 and body["unknown_id"] == 1 and body["invalid"] == 1
        # then field accuracy is 1.0 on /metrics
        metrics = lambda: get(f"http://127.0.0.1:{port}/metrics")[1]  # noqa: E731
        assert wait_until(lambda: sample_value(metrics(), "edge_field_accuracy_ratio") == 1.0, 30, proc)
        # and once a metric period has passed, it is the baseline decay is judged against
        wait_until(lambda: json.loads(get(f"http://127.0.0.1:{port}/health")[1])["field"]["baseline"] == 1.0, 30, proc)
        # when the next 40 labels all say the device was wrong, accuracy over the window falls to 0
        assert _post(port, {"labels": wrong})[1]["joined"] == 40
        assert wait_until(lambda: sample_value(metrics(), "edge_field_accuracy_ratio") == 0.0, 30, proc)
        assert sample_value(metrics(), "edge_feedback_labels_total", outcome="joined") == 80
        # and a repeated label is not counted twice; a body that is not JSON is a 400 with one line
        assert _post(port, right[:1])[1]["duplicate"] == 1
        req = urllib.request.Request(f"http://127.0.0.1:{port}/feedback", data=b"{nope", method="POST")
        try:
            urllib.request.urlopen(req, timeout=15)  # noqa: S310
            raise AssertionError("a broken body was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 400 and "JSON" in json.loads(exc.read())["error"]
        decayed = lambda: sample_value(metrics(), "edge_events_total", type="accuracy_decay") == 1  # noqa: E731
        assert wait_until(decayed, 30, proc), [x for x in metrics().splitlines() if "field" in x or "events" in x]
        _out, err = terminate(proc)
    finally:
        reap(proc)
        cam.stop()
    assert proc.returncode == 0 and "Traceback" not in err, err
    # and the outbox holds the figures and the event, each record valid against its schema
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.db"))
    try:
        records = outbox.pending(0, 100_000)
    finally:
        outbox.close()
    docs = [(r.kind, json.loads(r.payload)) for r in records]
    for kind, doc in docs:
        validate(doc, "metrics.json" if kind == "metrics" else "event.json")
    fields = [d["quality"]["field"] for k, d in docs if k == "metrics"]
    assert any(f.get("accuracy") == 1.0 for f in fields) and fields[-1]["accuracy"] == 0.0
    decay = [d for k, d in docs if k == "event" and d["type"] == "accuracy_decay"]
    assert len(decay) == 1 and decay[0]["baseline"] == 1.0 and decay[0]["value"] == 0.0
