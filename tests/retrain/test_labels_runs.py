"""Labels (precedence, imports), the run state table, triggers and retrain.yaml, on a real database (SQLite and
PostgreSQL for what touches SQL)."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
import yaml
from sqlalchemy import insert, select

from edge_runtime.errors import ConfigError
from fleet.retrain import RetrainError, runs, triggers
from fleet.retrain import labels as lab
from fleet.retrain.policy import RetrainPolicy, load_policy
from fleet.retrain.runs import TRANSITIONS, S
from fleet.server.auth import User
from fleet.server.db import tables as t
from fleet.server.db.engine import make_engine, migrate

OP, VIEWER = User(1, "olga", "operator"), User(2, "vic", "viewer")


@pytest.fixture
def engine(db_url):
    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


def _samples(engine, device: str, n: int) -> list[str]:
    ids = [f"s{i:03d}" for i in range(n)]
    with engine.begin() as conn:
        conn.execute(insert(t.samples), [{"device": device, "sample_id": s, "ts": 1.0, "received": time.time(),
                                          "sha256": "0" * 64, "bytes": 1, "ext": "png", "reason": "random",
                                          "confidence": 0.4, "label": None, "meta": {}} for s in ids])
    return ids


def _png(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((16, 20, 3), value, np.uint8))


def test_a_persons_label_wins_and_teacher_labels_stay_marked(engine):
    ids = _samples(engine, "cam-1", 3)
    # given a teacher's label on two samples and an import's on one of them
    lab.set_labels(engine, OP, [lab.Label("cam-1", ids[0], "7", confidence=0.93),
                                lab.Label("cam-1", ids[1], "1", confidence=0.99)], "teacher", by="teacher:abc")
    lab.set_labels(engine, OP, [lab.Label("cam-1", ids[1], "4")], "import")
    # when a person labels the first one otherwise
    lab.set_labels(engine, OP, [lab.Label("cam-1", ids[0], "2")], "person")
    with engine.connect() as conn:
        eff = lab.effective(conn, include_teacher=True)
        no_teacher = lab.effective(conn, include_teacher=False)
        page = lab.review(conn)
        mirrored = dict(conn.execute(select(t.samples.c.sample_id, t.samples.c.label)).all())
    # then the person's label wins, an import beats a teacher, and the teacher's stays marked with its confidence
    assert {k[1]: (v["label"], v["origin"]) for k, v in eff.items()} == {ids[0]: ("2", "person"),
                                                                         ids[1]: ("4", "import")}
    assert set(no_teacher) == set(eff)
    first = next(i for i in page["items"] if i["sample_id"] == ids[0])
    assert first["origin"] == "person" and first["labels"]["teacher"] == {**first["labels"]["teacher"], "label": "7",
                                                                          "confidence": 0.93, "by": "teacher:abc"}
    assert mirrored == {ids[0]: "2", ids[1]: "4", ids[2]: None}
    # and unknown samples, a viewer and an unknown origin are refused
    with pytest.raises(RetrainError, match="unknown samples"):
        lab.set_labels(engine, OP, [lab.Label("cam-9", "x", "1")], "person")
    with pytest.raises(PermissionError):
        lab.set_labels(engine, VIEWER, [lab.Label("cam-1", ids[2], "1")], "person")
    with pytest.raises(RetrainError, match="unknown label origin"):
        lab.set_labels(engine, OP, [], "oracle")


def test_imports_from_class_folders_csv_coco_and_yolo(engine, tmp_path):
    store = tmp_path / "store"
    ids = _samples(engine, "cam-1", 2)
    for c, v in (("cat", 10), ("dog", 20)):
        _png(tmp_path / "folders" / c / f"{c}.png", v)
    _png(tmp_path / "csv" / "a.png", 30)
    (tmp_path / "csv" / "labels.csv").write_text("path,label\na.png,cat\n")
    (tmp_path / "ids.csv").write_text(f"sample_id,label\ncam-1/{ids[0]},dog\ncam-1/{ids[1]},cat\n")
    _png(tmp_path / "coco" / "b.png", 40)
    (tmp_path / "coco" / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "b.png", "width": 20, "height": 16}],
        "categories": [{"id": 3, "name": "dog"}],
        "annotations": [{"image_id": 1, "category_id": 3, "bbox": [2, 4, 10, 8]}]}))
    _png(tmp_path / "yolo" / "images" / "c.png", 50)
    (tmp_path / "yolo" / "labels").mkdir()
    (tmp_path / "yolo" / "labels" / "c.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    (tmp_path / "yolo" / "classes.txt").write_text("cat\ndog\n")
    # when each format is imported
    got = [(fmt, lab.import_labels(engine, store, OP, fmt, p)["labelled"]) for fmt, p in [
        ("folders", tmp_path / "folders"), ("csv", tmp_path / "csv" / "labels.csv"), ("csv", tmp_path / "ids.csv"),
        ("coco", tmp_path / "coco" / "ann.json"), ("yolo", tmp_path / "yolo")]]
    with engine.connect() as conn:
        eff = lab.effective(conn, include_teacher=False)
    # then every image is a sample of device "import" in the content-addressed store, labelled with origin import
    assert got == [("folders", 2), ("csv", 1), ("csv", 2), ("coco", 1), ("yolo", 1)]
    assert eff[("cam-1", ids[0])]["label"] == "dog" and eff[("cam-1", ids[1])]["label"] == "cat"
    imported = [v for k, v in eff.items() if k[0] == lab.IMPORT_DEVICE]
    assert len(imported) == 5 and {v["origin"] for v in imported} == {"import"}
    assert len(list(store.rglob("*.png"))) == 5
    boxes = sorted((v["boxes"] for v in imported if v["boxes"]), key=lambda b: b[0][1])
    assert boxes[0] == [["dog", 0.1, 0.25, 0.6, 0.75]]  # COCO [x, y, w, h] in pixels, normalised
    assert boxes[1] == [["dog", pytest.approx(0.4), pytest.approx(0.3), pytest.approx(0.6), pytest.approx(0.7)]]
    # and bad input says what is wrong
    (tmp_path / "bad.csv").write_text("file,class\nx,y\n")
    with pytest.raises(RetrainError, match="header must be"):
        lab.import_labels(engine, store, OP, "csv", tmp_path / "bad.csv")
    (tmp_path / "yolo" / "labels" / "c.txt").write_text("7 0.5 0.5 0.2 0.4\n")
    with pytest.raises(RetrainError, match=r"c.txt:1: expected"):
        lab.import_labels(engine, store, OP, "yolo", tmp_path / "yolo")


CHAIN = ["start", "snapshot_done", "trained", "converted", "passed", "registered", "approve", "promoted"]


def test_the_run_state_table():
    # given the one transition table: the happy chain ends done, through approval
    state = S.QUEUED
    for event in CHAIN:
        state = TRANSITIONS[(state, event)]
    assert state == S.DONE
    assert TRANSITIONS[(S.REGISTERING, "registered_auto")] == S.CANARY
    assert TRANSITIONS[(S.GATING, "gate_failed")] == S.REJECTED
    assert TRANSITIONS[(S.TRAINING, "restart")] == S.TRAINING
    # then every working state can fail or be cancelled, and nothing leaves a final state
    for s in S:
        final = s in runs.FINAL
        assert ((s, "cancel") in TRANSITIONS) == (not final) and ((s, "fail") in TRANSITIONS) == (not final)
        assert not final or not [e for (f, e) in TRANSITIONS if f == s]


def _policy(tmp_path, **triggers_) -> RetrainPolicy:
    return RetrainPolicy.model_validate({
        "model": "digits", "target": "group:lobby", "training": {"command": "train {data}", "source_model": "m.onnx"},
        "gates": {"holdout": str(tmp_path)}, "triggers": triggers_})


def test_triggers_record_why_and_respect_cooldown_and_the_label_floor(db_url, tmp_path):
    engine = make_engine(db_url)
    migrate(engine)
    now = time.time()
    with engine.begin() as conn:
        conn.execute(insert(t.devices), [{"id": d, "first_seen": now, "last_seen": now, "online": True,
                                          "groups": ["lobby"], "drifting": True} for d in ("cam-1", "cam-2", "cam-3")])
        conn.execute(insert(t.events), [{"device": d, "outbox": "e", "record_id": 1, "ts": now, "received": now,
                                         "type": "drift", "data": {}} for d in ("cam-1", "cam-2")])
    ids = _samples(engine, "cam-1", 5)
    pol = _policy(tmp_path, drift_devices=2, new_labels=5, min_new_labels=5, cooldown_s=3600)
    with engine.connect() as conn:
        assert triggers.evaluate(conn, pol) == ([], 0)  # drift, but nothing labelled to learn from
    lab.set_labels(engine, OP, [lab.Label("cam-1", s, "3") for s in ids], "person")
    with engine.connect() as conn:
        reasons, new = triggers.evaluate(conn, pol)
    assert new == 5 and [r["trigger"] for r in reasons] == ["drift", "new_labels"]
    assert reasons[0]["devices"] == 2 and reasons[1]["labels"] == 5
    # when a run starts, a second cannot start beside it, and the cooldown keeps the triggers quiet
    rid = runs.create(engine, "retrain:trigger", pol, "1.0.0", reasons)
    with pytest.raises(RetrainError, match="still going"):
        runs.create(engine, "olga", pol, "1.0.0", [])
    with engine.connect() as conn:
        assert triggers.evaluate(conn, pol)[0] == []
        shown = runs.show(conn, rid)
    assert shown["state"] == "queued" and shown["steps"][0]["figures"]["reasons"] == reasons
    engine.dispose()


def test_field_accuracy_below_its_floor_and_the_schedule_start_runs(db_url, tmp_path):
    engine = make_engine(db_url)
    migrate(engine)
    now = time.time()
    with engine.begin() as conn:
        conn.execute(insert(t.devices), [{"id": d, "first_seen": now, "last_seen": now, "online": True,
                                          "groups": ["lobby"], "drifting": False} for d in ("cam-1", "cam-2")])
        conn.execute(insert(t.metrics), [{"device": d, "outbox": "e", "record_id": 1, "ts": now - 5, "received": now,
                                          "data": {"quality": {"field": {"accuracy": acc, "labels": 50}}}}
                                         for d, acc in (("cam-1", 0.6), ("cam-2", 0.7))])
    pol = _policy(tmp_path, field_accuracy_below=0.8, min_new_labels=0, cooldown_s=0)
    with engine.connect() as conn:
        reasons, _ = triggers.evaluate(conn, pol)
    assert reasons == [{"trigger": "field_accuracy", "accuracy": 0.65, "below": 0.8}]
    high = _policy(tmp_path, field_accuracy_below=0.6, min_new_labels=0, cooldown_s=0)
    with engine.connect() as conn:
        assert triggers.evaluate(conn, high)[0] == []
    # a schedule fires once its period has passed since the last run (or with no run yet)
    sched = _policy(tmp_path, schedule_s=60, min_new_labels=0, cooldown_s=0)
    with engine.connect() as conn:
        assert [r["trigger"] for r in triggers.evaluate(conn, sched)[0]] == ["schedule"]
    rid = runs.create(engine, "retrain:trigger", sched, "1.0.0", [])
    with engine.connect() as conn:
        assert triggers.evaluate(conn, sched)[0] == []
        assert [r["trigger"] for r in triggers.evaluate(conn, sched, now=now + 61)[0]] == ["schedule"]
    assert rid == 1
    engine.dispose()


def test_retrain_yaml_paths_are_relative_to_it_and_mistakes_are_one_line(tmp_path):
    f = tmp_path / "retrain.yaml"
    f.write_text("model: digits\ntarget: group:lobby\ntraining: {command: 'python t.py {data} {model} {output}', "
                 "source_model: m.onnx, base_data: base.npz}\ngates: {holdout: holdout}\n")
    pol = load_policy(f)
    assert pol.training.source_model == tmp_path / "m.onnx" and pol.gates.holdout == tmp_path / "holdout"
    assert pol.canary.auto is False and pol.triggers.cooldown_s == 3600
    assert pol.canary.thresholds.max_confidence_drop == 1.0  # off for re-trained canaries, unless given
    f.write_text(f.read_text() + "trigers: {}\n")
    with pytest.raises(ConfigError) as exc:
        load_policy(f)
    assert "trigers" in str(exc.value) and "\n" not in str(exc.value)


def test_the_readme_retrain_yaml_is_a_valid_policy():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("**Re-training", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    pol = RetrainPolicy.model_validate(yaml.safe_load(block))
    assert pol.triggers.drift_devices == 2 and pol.training.where == "server" and not pol.canary.auto
