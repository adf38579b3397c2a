"""HTTP(S) package download against a real local http.server: bounded by the signed size, resuming with Range
(206, a complete .part, HTTP 416, a server that ignores Range), and the agent falling back to MQTT chunks."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
from pathlib import Path

import pytest

from edge_runtime.update.errors import TransferError
from edge_runtime.update.http_transfer import http_download, part_path

SIZE = 300_000


class Server:
    """Serves ``data`` at /pkg in a ``mode``; records each request's Range header."""

    def __init__(self, data: bytes) -> None:
        self.data, self.mode, self.ranges = data, "range", []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # noqa: ANN002
                pass

            def do_GET(self):  # noqa: N802
                outer.ranges.append(self.headers.get("Range"))
                outer.respond(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/pkg"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def respond(self, h: http.server.BaseHTTPRequestHandler) -> None:
        data, rng = self.data, h.headers.get("Range")
        m = re.match(r"bytes=(\d+)-$", rng or "")
        if self.mode == "fail":
            h.send_error(503)
            return
        if m and self.mode == "416":
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.end_headers()
            return
        start = int(m.group(1)) if m and self.mode in ("range", "cut") else 0
        body = data[start:]
        if self.mode == "cut":
            body = body[: len(body) // 2]
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if self.mode != "no_length":
            h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        try:
            h.wfile.write(body)
        except OSError:
            pass
        if self.mode in ("cut", "no_length"):
            h.close_connection = True

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def server(archive):  # noqa: ANN001, ANN201
    s = Server(archive)
    yield s
    s.close()


def _get(server: Server, dest: Path, data: bytes) -> Path:
    return http_download(server.url, dest, hashlib.sha256(data).hexdigest(), len(data), timeout=10)


def test_fresh_download_then_resume_with_range(tmp_path, server, archive):
    dest = tmp_path / "a.erpkg"
    assert _get(server, dest, archive).read_bytes() == archive and server.ranges == [None]
    dest.unlink()
    part_path(dest).write_bytes(archive[:100_000])
    assert _get(server, dest, archive).read_bytes() == archive
    assert server.ranges[-1] == "bytes=100000-" and not part_path(dest).exists()


def test_a_complete_part_is_checked_without_asking_the_server(tmp_path, server, archive):
    dest = tmp_path / "a.erpkg"
    part_path(dest).write_bytes(archive)
    assert _get(server, dest, archive).read_bytes() == archive and server.ranges == []
    # complete but other bytes: started over from byte 0
    part_path(dest).write_bytes(os.urandom(SIZE))
    dest.unlink()
    assert _get(server, dest, archive).read_bytes() == archive and server.ranges == [None]


@pytest.mark.parametrize("mode", ["416", "ignore"])
def test_server_refusing_or_ignoring_range_restarts_from_zero(tmp_path, server, archive, mode):
    server.mode = mode
    dest = tmp_path / "a.erpkg"
    part_path(dest).write_bytes(archive[:123_456])
    if mode == "416":  # 416: start over once without Range (the server here refuses only ranged requests)
        assert _get(server, dest, archive).read_bytes() == archive
        assert server.ranges == ["bytes=123456-", None]
    else:  # 200 to a ranged request: the body is the whole file, written from byte 0
        assert _get(server, dest, archive).read_bytes() == archive
        assert server.ranges == ["bytes=123456-"]


def test_cut_connection_resumes_on_the_next_try(tmp_path, server, archive):
    server.mode = "cut"
    dest = tmp_path / "a.erpkg"
    with pytest.raises(TransferError) as err:
        _get(server, dest, archive)
    assert err.value.code == "http_failed" and 0 < part_path(dest).stat().st_size < SIZE
    server.mode = "range"
    assert _get(server, dest, archive).read_bytes() == archive and server.ranges[-1].startswith("bytes=")


@pytest.mark.parametrize("mode", ["range", "no_length"])
def test_more_bytes_than_signed_are_refused(tmp_path, server, archive, mode):
    """The server's file is 17x what the document signed: refused from Content-Length before reading, or
    while streaming when there is no length; the .part never holds more than the signed size."""
    server.data = archive * 17
    server.mode = mode
    dest = tmp_path / "a.erpkg"
    with pytest.raises(TransferError) as err:
        _get(server, dest, archive)
    assert err.value.code == "http_oversize"
    part = part_path(dest)
    assert not part.exists() or part.stat().st_size <= SIZE


def test_wrong_bytes_and_server_errors(tmp_path, server, archive):
    dest = tmp_path / "a.erpkg"
    server.data = os.urandom(SIZE)
    with pytest.raises(TransferError) as err:
        _get(server, dest, archive)
    assert err.value.code == "hash_mismatch" and not part_path(dest).exists() and not dest.exists()
    server.mode = "fail"
    with pytest.raises(TransferError) as err:
        _get(server, dest, archive)
    assert err.value.code == "http_failed" and "503" in str(err.value)
    with pytest.raises(TransferError) as err:
        http_download("file:///etc/passwd", dest, "0" * 64, 10)
    assert err.value.code == "bad_url"


@pytest.mark.mqtt
def test_agent_falls_back_to_mqtt_chunks_when_http_fails(tmp_path, broker, ota_keys, ota_packages):
    from fleet.publish import set_desired
    from tests.update.harness import FleetSide, InProcessDevice, device_config

    fleet = FleetSide(broker.port, ota_keys["priv"])
    dev = InProcessDevice(device_config(tmp_path, "cam-1", broker.port, ota_keys["pub"], ota_packages["v1"])).start()
    srv = Server(b"not the package")
    srv.mode = "fail"
    try:
        pub = fleet.upload(ota_packages["v2"])
        set_desired(fleet.link, fleet.topics, pub, "cam-1", fleet.key, url=srv.url)
        done = fleet.wait_for("cam-1", lambda d: d["state"] in ("committed", "failed"))
    finally:
        dev.stop()
        fleet.close()
        srv.close()
    assert (done["state"], done["serving"]) == ("committed", "tiny-2.0.0"), done
    assert srv.ranges == [None]  # HTTP was tried first
    assert any(d["code"] == "http_fallback" and "503" in d["reason"] for d in fleet.statuses["cam-1"])
