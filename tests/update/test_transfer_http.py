"""HTTP(S) package download against a real local http.server: bounded by the signed size, resuming with Range
(206, a complete .part, HTTP 416, a server that ignores Range), the device token (sent, refused,
never redirected), plain http only to loopback, and the agent falling back to MQTT chunks."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
from pathlib import Path

import pytest

from edge_runtime.errors import ConfigError
from edge_runtime.update.errors import TransferError
from edge_runtime.update.http_transfer import check_url, http_download, part_path, read_token

SIZE = 300_000


class Server:
    """Serves ``data`` at /pkg in a ``mode``; records each request's Range header."""

    def __init__(self, data: bytes) -> None:
        self.data, self.mode, self.ranges, self.auth = data, "range", [], []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # noqa: ANN002
                pass

            def do_GET(self):  # noqa: N802
                outer.ranges.append(self.headers.get("Range"))
                outer.auth.append(self.headers.get("Authorization"))
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
        if self.mode == "token" and h.headers.get("Authorization") != "Bearer erd_right":
            h.send_error(401)
            return
        if self.mode == "redirect":
            h.send_response(302)
            h.send_header("Location", self.url + "?elsewhere")
            h.end_headers()
            self.mode = "range"  # the redirect target would serve: it must not be asked
            return
        if m and self.mode == "416":
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.end_headers()
            return
        start = int(m.group(1)) if m and self.mode in ("range", "cut", "token") else 0
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


def test_the_device_token_is_sent_and_a_wrong_one_is_refused_clearly(tmp_path, server, archive):
    server.mode = "token"
    dest, sha = tmp_path / "a.erpkg", hashlib.sha256(archive).hexdigest()
    with pytest.raises(TransferError) as err:
        http_download(server.url, dest, sha, SIZE, timeout=10, token="erd_wrong")
    assert err.value.code == "http_unauthorized" and "HTTP 401" in str(err.value) and "token" in str(err.value)
    assert http_download(server.url, dest, sha, SIZE, timeout=10, token="erd_right").read_bytes() == archive
    assert server.auth == ["Bearer erd_wrong", "Bearer erd_right"]


def test_a_redirect_is_not_followed_so_the_token_goes_nowhere_else(tmp_path, server, archive):
    server.mode = "redirect"
    with pytest.raises(TransferError) as err:
        http_download(server.url, tmp_path / "a.erpkg", hashlib.sha256(archive).hexdigest(), SIZE, timeout=10,
                      token="erd_right")
    assert err.value.code == "http_failed" and "302" in str(err.value) and len(server.auth) == 1


def test_plain_http_only_to_loopback_unless_allowed():
    for url in ("https://fleet.example/p", "http://127.0.0.1:8700/p", "http://localhost/p", "http://[::1]/p"):
        check_url(url)
    with pytest.raises(TransferError) as err:
        check_url("http://fleet.example/p")
    assert err.value.code == "insecure_url" and "allow_plain_http" in str(err.value)
    check_url("http://fleet.example/p", allow_plain_http=True)


def test_the_token_file_must_be_private_and_hold_a_token(tmp_path):
    f = tmp_path / "token"
    f.write_text("erd_abc\n")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others.*chmod 600"):
        read_token(f)
    f.chmod(0o600)
    assert read_token(f) == "erd_abc"
    f.write_text("")
    with pytest.raises(ConfigError, match="empty or not a token"):
        read_token(f)
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(tmp_path / "missing")


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
