"""Round 3: the device's download token (edge_runtime/update/http_transfer.py) against whoever sits on the network.

Plain http is allowed only to loopback, so the token never crosses a network unencrypted. But urllib sends plain
http through the proxy named in ``http_proxy`` (a device behind a corporate proxy has one), and does not bypass it
for loopback: the token went in clear to the proxy host. A package URL over plain http is now fetched directly."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.update.test_transfer_http import Server


def test_the_token_over_plain_http_never_goes_through_an_http_proxy(tmp_path: Path) -> None:
    data = os.urandom(4096)
    server, proxy = Server(data), Server(b"")
    proxy.mode = "fail"
    try:
        code = ("import sys; from pathlib import Path; from edge_runtime.update.http_transfer import http_download; "
                "http_download(sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), timeout=10, "
                "token='erd_secret')")
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
        env["http_proxy"] = proxy.url.rsplit("/", 1)[0]  # the agent's environment names a proxy
        res = subprocess.run([sys.executable, "-c", code, server.url, str(tmp_path / "a.erpkg"),
                              hashlib.sha256(data).hexdigest(), str(len(data))],
                             env=env, capture_output=True, text=True, timeout=60)
        assert proxy.auth == [], "the token went to the proxy"
        assert res.returncode == 0, res.stderr[-1000:]
        assert server.auth == ["Bearer erd_secret"] and (tmp_path / "a.erpkg").read_bytes() == data
    finally:
        server.close()
        proxy.close()
