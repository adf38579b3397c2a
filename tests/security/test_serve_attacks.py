"""The attacks of issue 11 on a real `edge-runtime serve` process: image bombs, a forged header, slow bodies, a
missing token. Each ends refused with a 4xx/503 and a reason, the service keeps answering, memory stays flat."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil
import pytest

from tests.integration.helpers import get, terminate, wait_until
from tests.security import hostile
from tests.security.procs import MIB, in_threads, serve, signed_packages

# The issue measured +2.3 GiB for one 20000x20000 PNG; the goal is under +50 MiB. Asserted with room for allocator
# noise on a shared CI machine (the figure itself is printed by benchmarks/security_figures.py).
RSS_BOUND = 100 * MIB
TOKEN = "5f2b8c0e4a7d4e1b9c3a6f8e2d1b0a97"


@pytest.fixture(scope="module")
def pkgs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return signed_packages(tmp_path_factory.mktemp("attack-packages"))


def jpeg(hw: tuple[int, int] = (480, 640)) -> bytes:
    frame = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", frame)[1].tobytes()


def post(url: str, data: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/predict", content=data, headers={"content-type": "image/png", **headers}, timeout=60)


def test_image_bombs_are_refused_before_decoding_while_healthz_answers(pkgs) -> None:
    # given a real serve, warmed up with real predictions
    with serve(pkgs["classifier"], pkgs["key"]) as s:
        for _ in range(5):
            assert post(s.url, jpeg(), **{"content-type": "image/jpeg"}).status_code == 200
        idle = s.memory()["VmHWM"]
        # when a 1.2 MB PNG declaring 20000x20000 and a header declaring 60000x60000 arrive
        bomb, forged = hostile.png_bomb(), hostile.png_header_only(60000, 60000)
        one = post(s.url, bomb)
        assert one.status_code == 413 and "20000x20000" in one.json()["error"]
        two = post(s.url, forged)
        assert two.status_code == 413 and "60000x60000" in two.json()["error"]
        # and four clients send bombs at once, five each, while /healthz is polled
        healthz: list[int] = []
        results = in_threads(lambda _: [post(s.url, bomb).status_code for _ in range(5)], range(4))
        for _ in range(10):
            healthz.append(get(f"{s.url}/healthz", timeout=10)[0])
        # then every bomb got 413, /healthz always answered, and the peak resident memory barely moved
        assert results == [[413] * 5] * 4
        assert healthz == [200] * 10
        growth = s.memory()["VmHWM"] - idle
        print(f"serve peak RSS growth under bombs: {growth / MIB:.1f} MiB")
        assert growth < RSS_BOUND, f"peak RSS grew by {growth / MIB:.1f} MiB"
        # and the service still predicts, with every refusal counted on /metrics
        assert post(s.url, jpeg(), **{"content-type": "image/jpeg"}).status_code == 200
        metrics = httpx.get(f"{s.url}/metrics", timeout=10).text
        assert 'edge_serve_rejected_total{reason="image_pixels"} 22.0' in metrics
        assert 'edge_serve_requests_total{status="413"} 22.0' in metrics
        _, err = terminate(s.proc)
    assert "Traceback" not in err


def test_slow_bodies_hold_a_slot_only_until_the_body_timeout_and_excess_is_503(pkgs) -> None:
    # given serve with one worker and no queue
    with serve(pkgs["classifier"], pkgs["key"], "--workers", "1", "--max-queue", "0") as s:
        # when a client announces a body and sends almost none of it
        slow = socket.create_connection(("127.0.0.1", s.port))
        try:
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 100000\r\n\r\n\xff\xd8")  # fmt: skip
            # then another request is refused at once with 503 busy, and /healthz still answers
            busy = wait_until(lambda: (r := post(s.url, jpeg())).status_code == 503 and r, 30, s.proc)
            assert "busy" in busy.json()["error"]
            assert get(f"{s.url}/healthz", timeout=10)[0] == 200
        finally:
            slow.close()
        # and once the slow client is gone, the slot is free again
        wait_until(lambda: post(s.url, jpeg(), **{"content-type": "image/jpeg"}).status_code == 200, 30, s.proc)
        metrics = httpx.get(f"{s.url}/metrics", timeout=10).text
        assert 'edge_serve_rejected_total{reason="busy"}' in metrics
        assert 'edge_serve_rejected_total{reason="disconnected"} 1.0' in metrics
        _, err = terminate(s.proc)
    assert "Traceback" not in err, err


def test_token_file_guards_a_real_server(pkgs, tmp_path: Path) -> None:
    token_file = tmp_path / "serve.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with serve(pkgs["classifier"], pkgs["key"], "--token-file", str(token_file)) as s:
        assert get(f"{s.url}/healthz")[0] == 200
        assert post(s.url, jpeg()).status_code == 401
        assert post(s.url, jpeg(), authorization="Bearer " + TOKEN[:-1] + "0").status_code == 401
        assert httpx.get(f"{s.url}/metrics", timeout=10).status_code == 401
        ok = post(s.url, jpeg(), authorization=f"Bearer {TOKEN}", **{"content-type": "image/jpeg"})
        assert ok.status_code == 200 and ok.json()["task"] == "classification"


def test_a_bad_token_file_is_a_one_line_error(pkgs, tmp_path: Path) -> None:
    (tmp_path / "weak").write_text("secret\n")
    proc = subprocess.run([*serve_cli(pkgs), "--token-file", str(tmp_path / "weak")], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "at least 16 characters" in proc.stderr and "Traceback" not in proc.stderr


def serve_cli(pkgs: dict[str, Path]) -> list[str]:
    from tests.integration.helpers import CLI

    return [*CLI, "serve", "--package", str(pkgs["classifier"]), "--key", str(pkgs["key"]), "--port", "1"]


def test_serve_binds_loopback_by_default(pkgs) -> None:
    with serve(pkgs["classifier"], pkgs["key"]) as s:  # the listening socket exists once /healthz answered
        listening = psutil.Process(s.proc.pid).net_connections("tcp")
        assert {c.laddr.ip for c in listening if c.status == psutil.CONN_LISTEN} == {"127.0.0.1"}


def test_serve_off_loopback_without_a_token_warns(pkgs) -> None:
    with serve(pkgs["classifier"], pkgs["key"], "--host", "0.0.0.0") as s:  # noqa: S104 - the case under test
        _, err = terminate(s.proc)
    assert "serving on 0.0.0.0 without --token-file" in err and "Traceback" not in err
