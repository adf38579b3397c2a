"""Parsing device messages: valid records become rows, bad ones are refused one by one, nothing raises."""

from __future__ import annotations

import json

from fleet.server.loadgen import batch_payload, metric_record
from fleet.server.records import parse


def test_a_metric_batch_becomes_rows_with_the_figures_pulled_out():
    # given a batch of two real-format metric records
    records = [metric_record("cam-1", 100.0), metric_record("cam-1", 110.0)]
    payload = batch_payload("cam-1", "ep1", "metrics", 7, records)
    # when parsed
    p = parse("edge/devices/cam-1/metrics", payload, now=120.0)
    # then two rows keyed (device, outbox, record id), with latency, confidence and drift columns
    rows = p.rows["metrics"]
    assert [(r["device"], r["outbox"], r["record_id"]) for r in rows] == [("cam-1", "ep1", 7), ("cam-1", "ep1", 8)]
    assert rows[0]["latency_p99"] > rows[0]["latency_p50"] > 0 and 0.6 < rows[0]["confidence_mean"] <= 1.0
    assert rows[0]["drift_max"] is not None and p.rejected == [] and p.device_update["last_seen"] == 120.0


def test_bad_payloads_are_refused_with_a_reason_and_never_raise():
    deep = b"[" * 100_000 + b"]" * 100_000
    cases = {
        b"not json": "not JSON", deep: "not JSON", b"[1, 2]": "not a JSON object",
        json.dumps({"schema": "batch/1"}).encode(): "batch:",
        batch_payload("cam-2", "e", "metrics", 1, [metric_record("cam-2", 1.0)]): "names device 'cam-2'",
    }
    for payload, reason in cases.items():
        p = parse("edge/devices/cam-1/metrics", payload)
        assert not p.rows and len(p.rejected) == 1 and reason in p.rejected[0], (payload[:40], p.rejected)


def test_one_bad_record_in_a_batch_refuses_only_itself():
    good = metric_record("cam-1", 1.0)
    bad = {**metric_record("cam-1", 2.0)}
    del bad["fps"]
    p = parse("edge/devices/cam-1/metrics", batch_payload("cam-1", "e", "metrics", 1, [good, bad, good]))
    assert [r["record_id"] for r in p.rows["metrics"]] == [1, 3]
    assert len(p.rejected) == 1 and p.rejected[0].startswith("record 2: metrics: document")


def test_drift_events_mark_the_device_and_cleared_events_unmark_it():
    ev = {"schema": "event/1", "type": "drift", "device": "cam-1", "ts": 5.0, "model": "m", "version": "1",
          "feature": "brightness"}
    p = parse("edge/devices/cam-1/events", batch_payload("cam-1", "e", "event", 1, [ev, {**ev, "ts": 6.0,
                                                                                     "type": "drift_cleared"}]))
    assert [r["type"] for r in p.rows["events"]] == ["drift", "drift_cleared"]
    assert p.device_update["drifting"] is False and p.device_update["drift_at"] == 6.0


def test_topics_outside_the_layout_and_bad_device_ids_are_refused():
    assert parse("edge/devices/cam-1/other", b"{}").rejected
    assert parse("edge/devices/bad id/metrics", b"{}").rejected
    assert parse("elsewhere/devices/cam-1/metrics", b"{}").rejected


def test_the_compiled_checker_agrees_with_jsonschema_on_every_device_schema():
    # given every schema devices publish, and valid and broken documents for each
    import copy
    from importlib import resources

    from jsonschema import Draft202012Validator

    from fleet.server.schema_check import compile_schema

    ev = {"schema": "event/1", "type": "drift", "device": "d", "ts": 1.0, "model": "m", "version": "1"}
    docs = {"metrics": metric_record("d", 1.0), "event": ev,
            "state": {"schema": "state/1", "device": "d", "online": True, "ts": 1.0, "model": "x"},
            "batch": json.loads(batch_payload("d", "e", "metrics", 1, [metric_record("d", 1.0)]))}
    for name, good in docs.items():
        schema = json.loads(resources.files("edge_runtime.schemas").joinpath(f"{name}.json").read_text())
        ours, theirs = compile_schema(schema), Draft202012Validator(schema)
        variants = [good]
        for key in list(good):
            dropped = copy.deepcopy(good)
            del dropped[key]
            variants.append(dropped)
            for wrong in ("x", 1, 1.5, True, None, [], {}):
                variants.append({**good, key: wrong})
        # then both accept and refuse the same documents
        for doc in variants:
            assert (ours(doc, "document") is None) == theirs.is_valid(doc), (name, doc)
