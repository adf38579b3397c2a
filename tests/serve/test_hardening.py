"""serve against hostile requests (in process, FastAPI's TestClient): header sizes, the pixel limit, formats,
the bearer token, the counters on /metrics, bounded concurrency. The real-process attacks are in tests/security."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from edge_runtime.api import load
from edge_runtime.errors import ConfigError
from edge_runtime.imageheader import ImageHeaderError, image_size
from edge_runtime.serve import ModelService, ServeConfig, create_app
from edge_runtime.serve_guard import RequestError, WorkGate, load_token
from tests import model_factory
from tests.model_factory import factory_trust
from tests.security import hostile

TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_factory.classifier_package(tmp_path_factory.mktemp("hardening") / "classifier", golden=False).root


def client_for(pkg: Path, **config) -> TestClient:
    return TestClient(create_app(ModelService(lambda: load(pkg, trust=factory_trust())), load_in_background=False,
                                 config=ServeConfig(**config)))  # fmt: skip


def encoded(ext: str, h: int = 123, w: int = 321, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, np.full((h, w, 3), 90, np.uint8), params or [])
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(("data", "fmt"), [
    (encoded(".png"), "PNG"),
    (encoded(".jpg"), "JPEG"),
    (encoded(".jpg", params=[cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), "JPEG"),
    (encoded(".bmp"), "BMP"),
])  # fmt: skip
def test_header_size_matches_what_opencv_decodes(data: bytes, fmt: str) -> None:
    size = image_size(data)
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert (size.format, size.height, size.width) == (fmt, *frame.shape[:2])


def test_jpeg_size_is_the_frame_header_not_an_exif_thumbnail_inside_app1() -> None:
    real = encoded(".jpg", 40, 60)
    fake_sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 60000, 60000, 3) + bytes(9)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(fake_sof)) + fake_sof
    data = real[:2] + app1 + real[2:]
    assert (image_size(data).width, image_size(data).height) == (60, 40)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (40, 60)


@pytest.mark.parametrize(("data", "reason"), [
    (b"GIF89a" + bytes(20), "unsupported image format"),
    (b"\x89PNG\r\n\x1a\n" + bytes(4), "truncated PNG"),
    (b"\xff\xd8\xff\xe0\x00", "truncated JPEG"),
    (b"\xff\xd8\xff\xda\x00\x08", "no frame header"),
    (b"\xff\xd8" + b"\xff\xfe\x00\x02" * 5000, "more than 4096 segments"),
    (hostile.png_ihdr(0, 10), "empty image"),
    (hostile.jpeg_sof(10, 0), "empty image"),
    (b"BM" + bytes(12) + struct.pack("<I", 7) + bytes(8), "unknown header size"),
])  # fmt: skip
def test_bad_headers_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageHeaderError, match=reason):
        image_size(data)


@pytest.mark.parametrize(("data", "status", "reason", "kind"), [
    (hostile.png_bomb(), 413, "20000x20000 (400.0 megapixels)", "image_pixels"),
    (hostile.png_header_only(60000, 60000), 413, "60000x60000", "image_pixels"),
    (hostile.jpeg_sof(30000, 30000), 413, "30000x30000", "image_pixels"),
    (hostile.bmp_header(20000, -20000), 413, "20000x20000", "image_pixels"),
    (hostile.png_header_only(64, 64), 400, "corrupt or truncated", "image_decode"),
    (hostile.jpeg_sof(64, 64), 400, "corrupt or truncated", "image_decode"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", 415, "send JPEG, PNG or BMP", "image_format"),
])  # fmt: skip
def test_hostile_images_get_4xx_and_are_counted(classifier, data, status, reason, kind) -> None:
    with client_for(classifier) as c:
        r = c.post("/predict", content=data, headers={"content-type": "image/png"})
        assert r.status_code == status and reason in r.json()["error"], r.text
        metrics = c.get("/metrics").text
    assert f'edge_serve_rejected_total{{reason="{kind}"}} 1.0' in metrics
    assert f'edge_serve_requests_total{{status="{status}"}} 1.0' in metrics


def test_pixel_limit_is_configurable_and_counts_header_pixels(classifier) -> None:
    image = encoded(".png", 100, 100)
    with client_for(classifier, max_pixels=100 * 100) as c:
        assert c.post("/predict", content=image, headers={"content-type": "image/png"}).status_code == 200
    with client_for(classifier, max_pixels=100 * 100 - 1) as c:
        r = c.post("/predict", content=image, headers={"content-type": "image/png"})
        assert r.status_code == 413 and "(--max-pixels)" in r.json()["error"]


def test_token_guards_every_path_but_healthz(classifier) -> None:
    image = encoded(".jpg")
    with client_for(classifier, token=SecretStr(TOKEN)) as c:
        assert c.get("/healthz").status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN},
                        {"authorization": f"Basic {TOKEN}"}):  # fmt: skip
            r = c.post("/predict", content=image, headers={"content-type": "image/jpeg", **headers})
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        for path in ("/metrics", "/readyz", "/docs", "/openapi.json"):
            assert c.get(path).status_code == 401, path
        auth = {"authorization": f"bearer {TOKEN}"}
        ok = c.post("/predict", content=image, headers={"content-type": "image/jpeg", **auth})
        assert ok.status_code == 200 and ok.json()["task"] == "classification"
        metrics = c.get("/metrics", headers=auth).text
    assert 'edge_serve_rejected_total{reason="unauthorized"} 8.0' in metrics
    assert 'edge_serve_requests_total{status="401"} 4.0' in metrics
    assert 'edge_serve_requests_total{status="200"} 1.0' in metrics


def test_token_file_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    assert load_token(good).get_secret_value() == TOKEN
    for text in ("short", "two words here and there", ""):
        (tmp_path / "bad").write_text(text)
        with pytest.raises(ConfigError, match="at least 16 characters"):
            load_token(tmp_path / "bad")
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(tmp_path / "missing")


def test_work_gate_refuses_beyond_workers_plus_queue() -> None:
    gate = WorkGate(workers=1, queue=1)
    try:
        with gate.admitted(), gate.admitted():
            with pytest.raises(RequestError) as busy, gate.admitted():
                pass
            assert busy.value.status == 503 and busy.value.kind == "busy"
        with gate.admitted():  # slots come back when requests end, also after an error
            pass
        assert gate.active == 0
        assert asyncio.run(gate.run(sum, [1, 2, 3])) == 6
    finally:
        gate.close()


def test_counters_on_metrics_without_device_services(classifier) -> None:
    with client_for(classifier) as c:
        c.post("/predict", content=b"", headers={"content-type": "image/jpeg"})
        c.post("/predict", content=b"[1,", headers={"content-type": "application/json"})
        c.post("/predict", content=encoded(".jpg"), headers={"content-type": "image/jpeg"})
        text = c.get("/metrics").text
    for line in ('edge_serve_rejected_total{reason="empty"} 1.0', 'edge_serve_rejected_total{reason="json"} 1.0',
                 'edge_serve_requests_total{status="400"} 2.0', 'edge_serve_requests_total{status="200"} 1.0'):
        assert line in text, text
    assert "# TYPE edge_serve_errors_total counter" in text


def test_json_bodies_are_bounded_by_what_the_model_takes(classifier, tmp_path: Path) -> None:
    """A 16 MiB body of numbers would parse into 200+ MiB of Python lists: refused before parsing instead."""
    sensor = model_factory.tensor_package(tmp_path / "sensor", window=4, channels=2).root  # takes 8 values
    numbers = b"[" + b"0," * 4095 + b"0]"
    with client_for(sensor) as c:
        r = c.post("/predict", content=numbers, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "at most 96" in r.json()["error"]
        assert c.post("/predict", json=[[1.0, 2.0]] * 4).status_code == 200
        assert 'edge_serve_rejected_total{reason="json_size"} 1.0' in c.get("/metrics").text
    with client_for(classifier) as c:
        frame = b"[" + b"0," * (320 * 320 * 3) + b"0]"
        r = c.post("/predict", content=frame, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "send frames as JPEG or PNG" in r.json()["error"]


@pytest.mark.parametrize("length", ["9" * 5000, "\u00b2", "-1", "1e3", " "])
def test_odd_content_lengths_are_400(classifier, length: str) -> None:
    with client_for(classifier) as c:
        headers = {"content-type": "image/png", "content-length": length.encode("latin-1")}
        r = c.post("/predict", content=b"x", headers=headers)
        assert r.status_code == 400 and "Content-Length" in r.json()["error"]
