"""Fuzzing serve's request bodies (FastAPI's TestClient; the bombs against a real process are in
test_serve_attacks.py). Property: any body under any content type gets 200 or a 4xx with a one-line reason,
never a 500, and each refusal is counted once on /metrics."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge_runtime.api import load
from edge_runtime.serve import ModelService, create_app
from tests import model_factory
from tests.model_factory import factory_trust
from tests.security import hostile
from tests.security.strategies import hostile_json

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REFUSALS = {400, 408, 413, 415, 422}
CONTENT_TYPES = ["image/png", "image/jpeg", "application/octet-stream", "", "application/json", "text/plain",
                 "multipart/form-data; boundary=b", "multipart/form-data", "image/png; charset=\x7f"]


def encoded(ext: str) -> bytes:
    frame = np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    return cv2.imencode(ext, frame)[1].tobytes()


VALID_IMAGES = [encoded(".png"), encoded(".jpg"), encoded(".bmp")]


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    """A real image with bytes overwritten, cut, or a forged size in its header."""
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


DIMENSION = st.integers(0, 2**31 - 1) | st.sampled_from([0, 1, 4096, 20000, 60000, 65535, 2**31 - 1, 2**32 - 1])
IMAGES = st.one_of(
    mutated_image(),
    st.builds(hostile.png_header_only, DIMENSION, DIMENSION),
    st.builds(hostile.jpeg_sof, st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1)),
    st.builds(hostile.jpeg_sof, st.sampled_from([0, 3000, 65535]), st.sampled_from([0, 3000, 65535])),
    st.builds(hostile.bmp_header, st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1)),
    st.just(hostile.png_bomb()),
)


@st.composite
def multipart(draw: st.DrawFn) -> bytes:
    payload = draw(IMAGES | st.binary(max_size=200))
    name = draw(st.sampled_from([b"file", b"image", b"other", b"\xff", b""]))
    head = b'--b\r\nContent-Disposition: form-data; name="' + name + b'"; filename="x"\r\n'
    enc = draw(st.sampled_from([b"", b"Content-Transfer-Encoding: base64\r\n", b"Content-Type: multipart/mixed\r\n"]))
    return head + enc + b"\r\n" + payload + draw(st.sampled_from([b"\r\n--b--\r\n", b"", b"\r\n--b"]))


ARRAYS = st.lists(st.lists(st.floats(width=64) | st.integers(-(2**70), 2**70), min_size=2, max_size=2), min_size=1,
                  max_size=6).map(lambda rows: str(rows).replace("inf", "Infinity").replace("nan", "NaN").encode())
BODIES = st.one_of(IMAGES, hostile_json({"array": [[[1, 2, 3]]]}), ARRAYS, st.binary(max_size=500), multipart())


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("fuzz-serve")
    pkgs = [model_factory.classifier_package(root / "image", golden=False).root,
            model_factory.tensor_package(root / "tensor", window=4, channels=2).root]  # fmt: skip
    opened = [TestClient(create_app(ModelService(lambda p=p: load(p, trust=factory_trust())), load_in_background=False),
                         raise_server_exceptions=False) for p in pkgs]  # fmt: skip
    for c in opened:
        c.__enter__()
    yield opened
    for c in opened:
        c.__exit__(None, None, None)


def rejected_total(client: TestClient) -> float:
    text = client.get("/metrics").text
    return sum(float(v) for v in re.findall(r"^edge_serve_rejected_total\{[^}]*\} (\S+)$", text, re.M))


@FUZZ
@given(body=BODIES, ctype=st.sampled_from(CONTENT_TYPES) | st.just("image/png") | st.just("application/json"),
       which=st.sampled_from([0, 0, 1]))
def test_any_body_is_answered_with_200_or_a_counted_4xx(clients, body: bytes, ctype: str, which: int) -> None:
    client = clients[which]
    before = rejected_total(client)
    r = client.post("/predict", content=body, headers={"content-type": ctype} if ctype else {})
    assert r.status_code == 200 or r.status_code in REFUSALS, (r.status_code, r.text)
    event(f"HTTP {r.status_code}")
    if r.status_code != 200:
        reason = r.json()["error"]
        assert isinstance(reason, str) and reason and "\n" not in reason and "Traceback" not in reason
    assert rejected_total(client) == before + (r.status_code != 200)


def test_a_valid_request_is_still_served_after_the_fuzzing(clients) -> None:
    r = clients[0].post("/predict", content=VALID_IMAGES[0], headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["task"] == "classification"
    assert clients[0].get("/metrics").text.count('edge_serve_errors_total{reason="internal"}') == 0
