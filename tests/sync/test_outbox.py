"""The SQLite outbox: durability across kill -9, bounds, corrupt files, a full disk."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_runtime.sync.outbox import Outbox, OutboxConfig

ROOT = Path(__file__).resolve().parents[2]


def _payload(i: int, pad: int = 0) -> bytes:
    return json.dumps({"n": i, "pad": "x" * pad}).encode()


def test_records_get_increasing_ids_survive_reopen_and_leave_only_when_deleted(tmp_path):
    cfg = OutboxConfig(path=tmp_path / "outbox.db")
    ob = Outbox(cfg)
    ids = [ob.append("metrics", _payload(i)) for i in range(10)]
    assert ids == sorted(ids) and len(set(ids)) == 10
    epoch = ob.epoch
    ob.close()
    ob = Outbox(cfg)
    assert ob.epoch == epoch
    recs = ob.pending(0, limit=100)
    assert [r.id for r in recs] == ids and json.loads(recs[3].payload)["n"] == 3
    assert ob.delete_range(ids[0], ids[4]) == 5
    assert [r.id for r in ob.pending(0)] == ids[5:]
    assert ob.append("event", _payload(99)) > ids[-1]  # never reuses an id, even after deletes
    assert ob.stats()["bytes"] == sum(len(r.payload) for r in ob.pending(0))


def test_byte_bound_drops_oldest_first_and_counts(tmp_path):
    ob = Outbox(OutboxConfig(path=tmp_path / "o.db", max_bytes=10_000))
    for i in range(40):
        ob.append("metrics", _payload(i, pad=900))
    left = [json.loads(r.payload)["n"] for r in ob.pending(0, limit=100)]
    assert left == list(range(40 - len(left), 40))  # the newest survive, contiguous
    assert ob.stats()["bytes"] <= 10_000
    assert ob.dropped == 40 - len(left) > 0
    ob.close()
    assert Outbox(OutboxConfig(path=tmp_path / "o.db", max_bytes=10_000)).dropped == 40 - len(left)  # persisted


def test_age_bound_drops_expired_records(tmp_path):
    ob = Outbox(OutboxConfig(path=tmp_path / "o.db", max_age_s=0.3))
    ob.append("metrics", _payload(1))
    time.sleep(0.4)
    ob.append("metrics", _payload(2))  # the first append of a fresh outbox already pruned; force another prune
    # prune "just after" the second record was written, however slow its fsync was on a loaded machine
    second = max(r.created for r in ob.pending(0))
    ob._prune(second + 0.01)
    assert [json.loads(r.payload)["n"] for r in ob.pending(0)] == [2]
    assert ob.dropped == 1


def test_oversized_record_is_refused_and_counted(tmp_path):
    ob = Outbox(OutboxConfig(path=tmp_path / "o.db", max_record_bytes=1000))
    assert ob.append("event", _payload(1, pad=2000)) is None
    assert ob.refused_oversize == 1 and ob.count() == 0


_WRITER = """
import sys
from edge_runtime.sync.outbox import Outbox, OutboxConfig
ob = Outbox(OutboxConfig(path=sys.argv[1]))
i = 0
while True:
    rid = ob.append("metrics", ('{"n": %d}' % i).encode())
    print(rid, flush=True)  # printed only after the commit returned: the record was accepted
    i += 1
"""


def test_kill_9_mid_stream_loses_no_accepted_record(tmp_path):
    db = tmp_path / "o.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, cwd=ROOT, text=True)
    acked = []
    try:
        while len(acked) < 300:
            acked.append(int(proc.stdout.readline()))
        os.kill(proc.pid, signal.SIGKILL)
        acked += [int(line) for line in proc.stdout.read().split()]  # whatever it printed before dying
    finally:
        proc.kill()
        proc.wait()
    ob = Outbox(OutboxConfig(path=db))
    stored = {r.id for r in ob.pending(0, limit=10**6)}
    assert set(acked) <= stored
    assert not ob.set_aside


def test_garbage_outbox_file_is_set_aside_and_a_fresh_one_works(tmp_path):
    db = tmp_path / "o.db"
    db.write_bytes(b"this is not sqlite at all" * 200)
    ob = Outbox(OutboxConfig(path=db))
    assert len(ob.set_aside) == 1 and (tmp_path / ob.set_aside[0]).read_bytes().startswith(b"this is not")
    assert ob.append("metrics", _payload(1)) == 1
    ob.close()
    again = Outbox(OutboxConfig(path=db))  # reopening the fresh file: no second set-aside, no loop
    assert again.set_aside == [] and again.count() == 1


def test_damaged_pages_are_detected_and_set_aside(tmp_path):
    db = tmp_path / "o.db"
    ob = Outbox(OutboxConfig(path=db))
    ob.append_many([("metrics", _payload(i, pad=500)) for i in range(200)])
    ob.close()
    with sqlite3.connect(db) as c:  # fold the WAL into the main file, then scribble over the middle
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(db.read_bytes())
    raw[8192:20480] = os.urandom(12288)
    db.write_bytes(bytes(raw))
    ob = Outbox(OutboxConfig(path=db))
    assert ob.set_aside and "corrupt" in ob.stats()["last_error"]
    assert ob.append("metrics", _payload(1)) is not None


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_refuses_appends_cleanly_and_recovers_when_space_returns(tiny_fs):
    ballast = tiny_fs / "ballast"  # another process's file, removed later to give space back
    ballast.write_bytes(b"\0" * 96 * 1024)
    ob = Outbox(OutboxConfig(path=tiny_fs / "o.db", max_bytes=10**8))
    accepted = []
    for i in range(2000):
        rid = ob.append("metrics", _payload(i, pad=1000))
        if rid is None:
            break
        accepted.append(rid)
    st = ob.stats()
    assert st["append_failures"] >= 1 and "full" in st["last_error"]
    assert {r.id for r in ob.pending(0, limit=10**6)} == set(accepted)  # nothing accepted was lost
    ballast.unlink()
    rid = ob.append("metrics", _payload(-1))
    assert rid is not None and rid > accepted[-1]
