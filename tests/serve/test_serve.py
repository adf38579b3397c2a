"""The HTTP service: FastAPI's TestClient for the endpoints, and one real `edge-runtime serve` on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edge_runtime.api import load
from edge_runtime.serve import ModelService, ServeConfig, create_app
from tests import model_factory
from tests.model_factory import factory_trust, trust_args


@pytest.fixture(scope="module")
def pkgs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-packages")
    return {
        "classifier": model_factory.classifier_package(root / "classifier", golden=False).root,
        "sensor": model_factory.tensor_package(root / "sensor", window=4, channels=2).root,
    }


@pytest.fixture(scope="module")
def client(pkgs):
    service = ModelService(lambda: load(pkgs["classifier"], trust=factory_trust()))
    with TestClient(create_app(service, load_in_background=False)) as c:
        yield c


def jpeg(frame: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, buf = cv2.imencode(ext, frame)
    assert ok
    return buf.tobytes()


def test_health_and_readiness(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "model": "tiny", "version": "1.0.0"}


def test_predict_raw_jpeg_png_and_multipart_match_the_model(client, pkgs) -> None:
    frame = model_factory.sample_frames(1)[0]
    with load(pkgs["classifier"], trust=factory_trust()) as model:  # what the model says on the same decoded image
        expected_png = model.predict(cv2.imdecode(np.frombuffer(jpeg(frame, ".png"), np.uint8), cv2.IMREAD_COLOR))
    png = client.post("/predict", content=jpeg(frame, ".png"), headers={"content-type": "image/png"})
    assert png.status_code == 200
    body = png.json()
    assert body["task"] == "classification"
    assert body["classes"][0]["index"] == expected_png.top.index
    assert body["classes"][0]["score"] == pytest.approx(expected_png.top.score, abs=1e-5)
    raw = client.post("/predict", content=jpeg(frame), headers={"content-type": "image/jpeg"})
    multi = client.post("/predict", files={"file": ("f.jpg", jpeg(frame), "image/jpeg")})
    assert raw.status_code == multi.status_code == 200
    assert raw.json()["classes"] == multi.json()["classes"]


def test_json_array_frame(client) -> None:
    frame = model_factory.sample_frames(1)[0]
    by_json = client.post("/predict", json=frame.tolist())
    by_png = client.post("/predict", content=jpeg(frame, ".png"), headers={"content-type": "image/png"})
    assert by_json.status_code == 200
    assert by_json.json()["classes"] == by_png.json()["classes"]


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"content": b"\xff\xd8garbage", "headers": {"content-type": "image/jpeg"}}, 400, "not a decodable image"),
        ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, "empty request body"),
        ({"content": b"[1, 2", "headers": {"content-type": "application/json"}}, 400, "invalid JSON"),
        ({"json": [[1, 2], [3]]}, 400, "regular shape"),
        ({"json": [[[300, 0, 0]]]}, 422, "0..255"),
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "unsupported content type"),
        ({"content": b"", "headers": {"content-type": "application/json"}}, 400, "invalid JSON"),
        ({"json": {"frame": [1, 2]}}, 400, "non-empty numeric array"),
        ({"json": [["a", "b"]]}, 400, "numeric array"),
        ({"content": b"[[[NaN, 0, 0]]]", "headers": {"content-type": "application/json"}}, 422, "finite"),
        (
            {"content": b"[[[1" + b"0" * 400 + b", 0, 0]]]", "headers": {"content-type": "application/json"}},
            400,
            "numeric array",
        ),
        (
            {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {"content-type": "application/json"}},
            400,
            "nested too deeply",
        ),
        ({"files": {"other": ("a.txt", b"hello", "text/plain")}}, 415, "unsupported image format"),
        (
            {
                "content": b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--\r\n',
                "headers": {"content-type": "multipart/form-data; boundary=b"},
            },
            400,
            "no file part",
        ),
    ],
)
def test_bad_requests_get_4xx_with_a_reason(client, kwargs, status, reason) -> None:
    r = client.post("/predict", **kwargs)
    assert r.status_code == status
    assert reason in r.json()["error"]


def test_tensor_model_takes_json_and_checks_the_shape(pkgs) -> None:
    service = ModelService(lambda: load(pkgs["sensor"], trust=factory_trust()))
    with TestClient(create_app(service, load_in_background=False)) as c:
        window = np.arange(8, dtype=np.float32).reshape(4, 2)
        ok = c.post("/predict", json={"array": window.tolist()})
        assert ok.status_code == 200
        assert ok.json()["raw"]["mean"] == [window.mean(axis=0).tolist()]
        wrong = c.post("/predict", json=np.zeros((3, 2)).tolist())
        assert wrong.status_code == 422 and "shape" in wrong.json()["error"]
        image = c.post("/predict", content=b"x", headers={"content-type": "image/jpeg"})
        assert image.status_code == 415


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" + b",".join([b"[NaN, 1]"] * 4) + b"]", "finite numbers"),
        (b"[" + b",".join([b"[Infinity, 1]"] * 4) + b"]", "finite numbers"),
        (b"[" + b",".join([b"[null, 1]"] * 4) + b"]", "finite numbers"),
        (b"[" + b",".join([b"[1e39, 1]"] * 4) + b"]", "finite numbers"),  # beyond float32
        (b"[" + b",".join([b"[3e38, 3e38]"] * 4) + b"]", "output for this input is not finite"),  # sum overflows
    ],
)
def test_non_finite_arrays_are_422_never_500(pkgs, body: bytes, reason: str) -> None:
    """Python's JSON reader takes NaN and Infinity; JSON responses cannot hold them: refused with a reason."""
    service = ModelService(lambda: load(pkgs["sensor"], trust=factory_trust()))
    with TestClient(create_app(service, load_in_background=False), raise_server_exceptions=False) as c:
        r = c.post("/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and reason in r.json()["error"]


def test_bodies_over_the_limit_are_413_with_or_without_a_length(pkgs) -> None:
    service = ModelService(lambda: load(pkgs["sensor"], trust=factory_trust()))
    with TestClient(create_app(service, load_in_background=False, config=ServeConfig(max_body_bytes=1000))) as c:
        window = [[1.0, 2.0]] * 4
        assert c.post("/predict", json=window).status_code == 200
        sized = c.post("/predict", json=[[1.0, 2.0]] * 200)
        assert sized.status_code == 413 and "larger than 1000 bytes" in sized.json()["error"]

        def chunks():  # no Content-Length: chunked transfer, refused while streaming
            for _ in range(1000):
                yield b"[1.0, 2.0]," * 10

        streamed = c.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert streamed.request.headers.get("content-length") is None
        bad_length = c.post("/predict", content=b"[1]", headers={"content-type": "application/json",
                                                                  "content-length": "x"})  # fmt: skip
        assert bad_length.status_code == 400


def test_not_ready_when_the_package_is_bad(tmp_path: Path) -> None:
    service = ModelService(lambda: load(tmp_path / "nothing-here", trust=factory_trust()))
    with TestClient(create_app(service, load_in_background=False)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and "does not exist" in r.json()["reason"]
        assert c.post("/predict", json=[1]).status_code == 503


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_uvicorn_server(pkgs) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime.cli", "serve", "--package", str(pkgs["classifier"]), *trust_args(),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        frame = model_factory.sample_frames(1)[0]
        r = httpx.post(f"{url}/predict", content=jpeg(frame), headers={"content-type": "image/jpeg"}, timeout=10)
        assert r.status_code == 200 and len(r.json()["classes"]) == 3
        bad = httpx.post(f"{url}/predict", content=b"nope", headers={"content-type": "image/jpeg"}, timeout=10)
        assert bad.status_code == 415
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal so supervisors see why it ended
    assert proc.returncode in (0, -15)
    assert "Traceback" not in err


def test_serve_with_a_bad_package_is_a_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "serve", "--package", str(tmp_path / "none"), *trust_args()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("edge-runtime: error:") and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
