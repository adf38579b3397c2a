"""Collection policy: signed and verified, replay-protected, persisted; selection rules, class quotas, pHash
near-duplicate suppression; redaction (a real BlazeFace on LiteRT, downscale, grayscale, an external command)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.monitoring.collect import (
    CollectionPolicy,
    DedupRule,
    DriftRule,
    PolicyRejected,
    PolicyStore,
    Redaction,
    sign_policy,
)
from edge_runtime.monitoring.collector import Quotas, Selector, hamming, phash
from edge_runtime.monitoring.config import SampleConfig
from edge_runtime.monitoring.redact import FaceBlur, RedactionError, Redactor
from edge_runtime.monitoring.samples import SampleStore
from edge_runtime.package import generate_keypair, load_private_key
from edge_runtime.package.signing import TrustStore
from edge_runtime.sync.topics import Topics

skimage_data = pytest.importorskip("skimage.data")


def _photos() -> list[np.ndarray]:
    import cv2

    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
    return [cv2.resize(np.ascontiguousarray(getattr(skimage_data, n)()[:, :, ::-1]), (160, 120)) for n in names]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("keys")
    good, bad = generate_keypair(d / "operator"), generate_keypair(d / "intruder")
    trust = TrustStore.from_paths([good[1]], ["operator"])
    return load_private_key(good[0]), load_private_key(bad[0]), trust


# ---------------------------------------------------------------- pHash and quotas
def test_phash_ignores_small_noise_and_separates_different_photos() -> None:
    photos = _photos()
    rng = np.random.default_rng(0)
    for p in photos:
        noisy = np.clip(p.astype(np.int16) + rng.integers(-8, 9, p.shape), 0, 255).astype(np.uint8)
        assert hamming(phash(p), phash(noisy)) <= 6
    hashes = [phash(p) for p in photos]
    assert min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]) > 10


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_hamming_is_a_metric_on_64_bit_hashes(a: int, b: int) -> None:
    assert hamming(a, a) == 0 and hamming(a, b) == hamming(b, a) and 0 <= hamming(a, b) <= 64


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 3 * 3600)), max_size=200),
       st.integers(0, 5))
def test_class_quotas_never_exceeded_in_any_hour(offers: list[tuple[str, float]], limit: int) -> None:
    q = Quotas(CollectionPolicy(class_quota=limit, class_quotas={"c": 1}))
    kept: dict[tuple[str, int], int] = {}
    for label, ts in sorted(offers, key=lambda o: o[1]):
        if not q.full(label, ts):
            q.add(label, ts)
            kept[(label, int(ts // 3600))] = kept.get((label, int(ts // 3600)), 0) + 1
    assert all(n <= (1 if label == "c" else limit) for (label, _), n in kept.items())


def test_selector_keeps_by_rule_and_suppresses_duplicates_and_full_quotas() -> None:
    photos = _photos()
    pol = CollectionPolicy(low_confidence=0.5, random_rate=0.0, class_quota=2, dedup=DedupRule(max_distance=6),
                           on_drift=DriftRule(seconds=5, frames=2))
    sel = Selector(pol, seed=1)
    # confident inputs are not kept; an unsure one is
    assert sel.offer(photos[0], 0.9, "a", 0.0, now=0.0) is None
    kept = sel.offer(photos[0], 0.2, "a", 0.0, now=1.0)
    assert kept is not None and kept["reason"] == "low_confidence" and kept["class"] == "a" and kept["phash"]
    # the same scene again (a little noise) is a near-duplicate
    assert sel.offer(np.clip(photos[0].astype(int) + 3, 0, 255).astype(np.uint8), 0.2, "a", 0.0, now=2.0) is None
    assert sel.counters["skipped_duplicate"] == 1
    # a second different scene of class a is kept, a third is over the quota
    assert sel.offer(photos[1], 0.2, "a", 0.0, now=3.0) is not None
    assert sel.offer(photos[2], 0.2, "a", 0.0, now=4.0) is None and sel.counters["skipped_quota"] == 1
    # after a drift event, confident inputs are kept too, for at most `frames` of them
    sel.on_drift(now=5.0)
    assert sel.offer(photos[3], 0.99, "b", 0.0, now=5.1)["reason"] == "drift"  # type: ignore[index]
    assert sel.offer(photos[4], 0.99, "b", 0.0, now=5.2)["reason"] == "drift"  # type: ignore[index]
    assert sel.offer(photos[5], 0.99, "b", 0.0, now=5.3) is None
    assert sel.counters["offered"] == 8 and sel.counters["kept"] == 4


def test_random_slice_keeps_confident_inputs_at_about_its_rate() -> None:
    sel = Selector(CollectionPolicy(low_confidence=None, random_rate=0.1, dedup=None), seed=3)
    frame = np.zeros((16, 16, 3), np.uint8)
    n = sum(sel.offer(frame, 0.99, "a", 0.0, now=float(i)) is not None for i in range(2000))
    assert 140 < n < 260 and sel.counters["random"] == n


# ---------------------------------------------------------------- signed policy
def test_policy_accepted_persisted_and_replays_forgeries_and_stale_ones_refused(keys, tmp_path) -> None:  # noqa: ANN001
    good, bad, trust = keys
    seen: list[object] = []
    reports: list[tuple[str, dict]] = []
    store = PolicyStore(tmp_path, ("lobby",), trust, Topics(), on_policy=seen.append,
                        report=lambda k, b: reports.append((k, b)))
    fleet_doc, fleet_env = sign_policy("fleet", CollectionPolicy(upload=True, class_quota=5), good)
    time.sleep(0.001)
    group_doc, group_env = sign_policy("group:lobby", CollectionPolicy(upload=True, class_quota=1), good)
    store.on_message("edge/fleet/policy", fleet_env)
    assert store.current == fleet_doc
    store.on_message("edge/groups/lobby/policy", group_env)
    assert store.current == group_doc and len(seen) == 2  # a group's policy overrides the fleet's
    store.on_message("edge/groups/lobby/policy", group_env)  # the retained copy again on reconnect: ignored
    assert store.counters == {"accepted": 2, "rejected": 0, "unchanged": 1}
    # forged (another key), unsigned, tampered, stale (an older one replayed), the wrong scope: all refused
    _, forged = sign_policy("group:lobby", CollectionPolicy(upload=True, class_quota=100), bad)
    env = json.loads(group_env)
    tampered = json.dumps({**env, "document": env["document"].replace('"class_quota": 1', '"class_quota": 9')})
    time.sleep(0.001)
    _, other_scope = sign_policy("group:garage", CollectionPolicy(), good)
    for topic, payload in [("edge/groups/lobby/policy", forged), ("edge/fleet/policy", b'{"upload": true}'),
                           ("edge/groups/lobby/policy", tampered.encode()), ("edge/fleet/policy", fleet_env),
                           ("edge/groups/lobby/policy", other_scope)]:
        store.on_message(topic, payload)
    codes = [b["code"] for k, b in reports if k == "policy_rejected"]
    assert codes == ["untrusted_key", "unsigned", "signature_invalid", "wrong_scope"]
    assert store.current == group_doc and store.current.policy.class_quota == 1
    assert store.counters["unchanged"] == 2  # the fleet's own document again: not a change, not a refusal
    # a restart (offline) finds the last good policy of each scope, verified again
    again = PolicyStore(tmp_path, ("lobby",), trust, Topics())
    assert again.current == group_doc and again.docs["fleet"] == fleet_doc
    # a kept policy file that was tampered with is not used
    (tmp_path / "policy-group-lobby.json").write_bytes(tampered.encode())
    assert PolicyStore(tmp_path, ("lobby",), trust, Topics()).current == fleet_doc


def test_an_older_policy_is_refused_as_stale(keys, tmp_path) -> None:  # noqa: ANN001
    good, _, trust = keys
    _, first = sign_policy("fleet", CollectionPolicy(), good)
    time.sleep(0.001)
    _, second = sign_policy("fleet", CollectionPolicy(upload=True), good)
    store = PolicyStore(tmp_path, (), trust, Topics())
    store.offer("fleet", second)
    with pytest.raises(PolicyRejected) as exc:
        store.offer("fleet", first)
    assert exc.value.code == "stale" and store.current.policy.upload  # type: ignore[union-attr]


# ---------------------------------------------------------------- redaction
def test_blur_faces_blurs_the_astronauts_face_and_leaves_the_rest() -> None:
    img = np.ascontiguousarray(skimage_data.astronaut()[:, :, ::-1])
    out = Redactor([Redaction(kind="blur_faces")])(img)
    face = (slice(90, 170), slice(180, 270))  # inside the face (eyes, nose, mouth)
    detail = lambda a: float(np.abs(np.diff(a.astype(np.float32), axis=1)).mean())  # noqa: E731
    assert detail(out[face]) < 0.4 * detail(img[face])
    assert np.array_equal(out[400:], img[400:])  # far from the face: untouched
    assert FaceBlur().boxes(np.ascontiguousarray(skimage_data.coins()), 0.5) == []


def test_downscale_grayscale_and_command_steps(tmp_path) -> None:  # noqa: ANN001
    img = _photos()[1]
    out = Redactor([Redaction(kind="downscale", max_side=80), Redaction(kind="grayscale")])(img)
    assert out.shape == (60, 80)
    import cv2

    other = np.full((20, 30, 3), 77, np.uint8)  # the program's output replaces the image
    (tmp_path / "out.png").write_bytes(cv2.imencode(".png", other)[1].tobytes())
    out = Redactor([Redaction(kind="command", argv=("cat", str(tmp_path / "out.png")))])(img)
    assert np.array_equal(out, other)
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big")
                                       + (60000).to_bytes(4, "big") + b"\x08\x02\x00\x00\x00" + b"\x00" * 20)
    for argv in (("false",), ("echo", "not an image"), ("sleep", "5"), ("/nonexistent/redactor",),
                 ("cat", str(tmp_path / "huge.png"))):  # a header declaring 3.6 G pixels: never decoded
        with pytest.raises(RedactionError):
            Redactor([Redaction(kind="command", argv=argv, timeout_s=0.3)])(img)


def test_a_failing_redaction_drops_the_sample(tmp_path) -> None:  # noqa: ANN001
    store = SampleStore(SampleConfig(directory=tmp_path / "s", low_confidence=None))
    try:
        store.redactor = Redactor([Redaction(kind="command", argv=("false",))])
        store.put(_photos()[0], {"reason": "random", "ts": 1.0, "frame_index": 1, "redact": True})
        store.flush()
        store.redactor = Redactor([Redaction(kind="downscale", max_side=40)])
        store.put(_photos()[0], {"reason": "random", "ts": 2.0, "frame_index": 2, "redact": True,
                                 "upload": "pending"})
        store.flush()
        assert store.redaction_failed == 1 and [m["frame_index"] for m in store.list()] == [2]
        assert [m["shape"] for m in store.pending()] == [[30, 40, 3]]
        assert len(list((tmp_path / "s").glob("*.png"))) == 1
    finally:
        store.close()


def test_the_daily_upload_budget_survives_a_restart(tmp_path) -> None:  # noqa: ANN001
    from edge_runtime.monitoring.collect import UploadRule
    from edge_runtime.sync.uploader import SampleUploader

    class Offline:  # the budget is spent before anything is published: no broker needed to count it
        topics, connected = Topics(), False

    store = SampleStore(SampleConfig(directory=tmp_path / "s"))
    rule = UploadRule(bytes_per_s=1 << 30, bytes_per_day=5000)
    try:
        up = SampleUploader(store, Offline(), "cam-1", tmp_path / "budget.json", lambda: rule)
        assert up._spend(3000, rule) and not up._spend(3000, rule)
        up._save_day()
        again = SampleUploader(store, Offline(), "cam-1", tmp_path / "budget.json", lambda: rule)
        assert again._day_bytes == 3000 and not again._spend(2001, rule) and again._spend(2000, rule)
    finally:
        store.close()


def test_deleted_replay_state_does_not_let_an_older_policy_back_in(keys, tmp_path) -> None:  # noqa: ANN001
    good, _, trust = keys
    _, first = sign_policy("fleet", CollectionPolicy(), good)
    time.sleep(0.001)
    _, second = sign_policy("fleet", CollectionPolicy(upload=True), good)
    PolicyStore(tmp_path, (), trust, Topics()).offer("fleet", second)
    for p in tmp_path.glob("policy-fleet.seq*"):
        p.unlink()
    with pytest.raises(PolicyRejected) as exc:
        PolicyStore(tmp_path, (), trust, Topics()).offer("fleet", first)
    assert exc.value.code == "stale"


@pytest.mark.parametrize(("device_allows", "policy_allows"), [(False, True), (True, False), (True, True)])
def test_samples_are_marked_for_upload_only_when_device_and_policy_both_opt_in(
        tmp_path, device_allows: bool, policy_allows: bool) -> None:  # noqa: ANN001
    from edge_runtime.monitoring.config import MonitorConfig
    from edge_runtime.monitoring.monitor import Monitor
    from tests.monitoring.helpers import frame_result

    cfg = MonitorConfig(period_s=3600, system=False, samples=SampleConfig(
        directory=tmp_path / "s", low_confidence=None, upload=device_allows))
    mon = Monitor(cfg, None)
    try:
        assert mon.collection is not None
        mon.collection.set_policy(CollectionPolicy(upload=policy_allows, low_confidence=0.5, random_rate=0.0,
                                                   redact=(Redaction(kind="grayscale"),)), cfg.samples.upload)
        for i, photo in enumerate(_photos()):
            mon(frame_result(i, photo, confidence=0.2 if i % 2 else 0.9))
            mon.samples.flush()  # type: ignore[union-attr]
        kept = mon.samples.list()  # type: ignore[union-attr]
        assert [m["frame_index"] for m in kept] == [1, 3, 5] and all(len(m["shape"]) == 2 for m in kept)
        assert [m.get("upload") for m in kept] == ["pending" if device_allows and policy_allows else None] * 3
    finally:
        mon.close()


def test_blur_faces_finds_a_small_face_in_a_large_frame_through_tiles() -> None:
    import cv2

    face = cv2.resize(np.ascontiguousarray(skimage_data.astronaut()[:, :, ::-1]), (256, 256))  # face ~55 px
    frame = np.full((720, 1280, 3), 40, np.uint8)
    frame[300:556, 800:1056] = face
    region = (slice(300 + 45, 300 + 95), slice(800 + 90, 800 + 135))  # eyes to mouth
    detail = lambda a: float(np.abs(np.diff(a.astype(np.float32), axis=1)).mean())  # noqa: E731
    whole = Redactor([Redaction(kind="blur_faces", tile_levels=0)])(frame)
    tiled = Redactor([Redaction(kind="blur_faces", tile_levels=1)])(frame)
    assert detail(whole[region]) > 0.8 * detail(frame[region])  # too small for one look at the whole frame
    assert detail(tiled[region]) < 0.4 * detail(frame[region])


def test_the_disk_cap_evicts_samples_already_uploaded_before_those_waiting(tmp_path) -> None:  # noqa: ANN001
    store = SampleStore(SampleConfig(directory=tmp_path / "s", low_confidence=None, max_files=2))
    try:
        for i, upload in enumerate(("pending", "done", "pending")):
            store.put(_photos()[i], {"reason": "random", "ts": float(i), "frame_index": i, "upload": upload})
            store.flush()
        assert [(m["frame_index"], m["upload"]) for m in store.list()] == [(0, "pending"), (2, "pending")]
    finally:
        store.close()


def test_a_restart_does_not_reset_the_class_quota() -> None:
    now = 1.8e9 + 1800.0  # the middle of a UTC hour
    q = Quotas(CollectionPolicy(class_quota=2))
    q.seed([{"class": "a", "kept_at": now - 1}, {"class": "a", "kept_at": now - 2}, {"class": "b", "kept_at": now},
            {"class": "a", "kept_at": now - 2 * 86400}], now)  # the last one is from another hour
    assert q.full("a", now) and not q.full("b", now)
