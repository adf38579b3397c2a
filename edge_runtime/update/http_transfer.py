"""Fetch a package archive over HTTP(S), bounded by the size and sha256 of the signed desired document.

Resumes a partial ``.part`` file with a Range request and copes with every answer a server gives: 206 with the
right Content-Range appends; 200 (a server that ignores Range) starts over; 416 (the range is past the end of
the server's file) re-checks what is there and starts over once; a ``.part`` that is already complete is
checked without asking the server at all. Nothing past the signed size is ever written: a Content-Length or a
body larger than what was signed is refused. Any failure raises TransferError; the caller resumes while a try
makes progress, else falls back to the MQTT chunks (steps.download).

The fleet server wants the device's own bearer token (``update.http_token_file``, a 0600 file). The token is
never sent over plain http to a host other than loopback (unless ``update.allow_plain_http``), plain http never
goes through an ``http_proxy`` (it would carry the token in clear to the proxy), and redirects are not followed,
so a redirect cannot carry it elsewhere. A 401 or 403 says so in the error (code ``http_unauthorized``), which
the agent reports on its status topic before falling back.
"""

from __future__ import annotations

import errno
import http.client
import ipaddress
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from edge_runtime.errors import ConfigError
from edge_runtime.fsutil import fsync_dir, sha256_file
from edge_runtime.update.errors import DiskFullError, TransferError

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_BLOCK = 1 << 16
MAX_TOKEN = 512


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".http.part")


def read_token(path: Path) -> str:
    """The device's download token from ``path``; ConfigError if unreadable, malformed or readable by others."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the download credential {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise ConfigError(f"the download credential {path} is readable by others (mode {mode & 0o777:o}): "
                          f"chmod 600 {path}")
    if not text or len(text) > MAX_TOKEN or not text.isprintable() or " " in text:
        raise ConfigError(f"the download credential {path} is empty or not a token")
    return text


def check_url(url: str, allow_plain_http: bool = False) -> None:
    """https anywhere; plain http only to a loopback host unless ``allow_plain_http``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme != "http":
        raise TransferError(f"package URL {url[:200]!r} is not http(s)", "bad_url")
    host = parts.hostname or ""
    if allow_plain_http or host == "localhost" or _loopback(host):
        return
    raise TransferError(f"refusing plain http to {host}: the credential and the package would travel "
                        "unencrypted (serve the fleet over https, or set update.allow_plain_http)", "insecure_url")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: following it would send the device's token to wherever it points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]  # noqa: ANN001
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)  # https: an environment proxy tunnels (CONNECT), TLS end to end
# plain http never goes through a proxy: urllib would send it (token included) in clear to the proxy's host, and
# does not bypass the proxy for loopback
_DIRECT = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))


def http_download(url: str, dest: Path, sha256: str, size: int, stop: threading.Event | None = None,
                  timeout: float = 30.0, token: str | None = None, allow_plain_http: bool = False) -> Path:
    """Fetch ``url`` into ``dest`` (resuming ``dest.http.part``); return ``dest`` once size and sha256 match."""
    check_url(url, allow_plain_http)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    restarted = False
    while True:
        have = _usable_part(part, size)
        if have == size:
            if sha256_file(part) == sha256:
                return _finish(part, dest)
            _truncate(part, 0)  # complete but wrong: the bytes came from another file
            have = 0
        try:
            _fetch(url, headers, part, have, size, stop, timeout)
        except _StartOver as exc:
            if restarted:
                raise TransferError(f"HTTP download failed: {exc}", "http_failed") from None
            restarted = True
            _truncate(part, 0)
            continue
        got = part.stat().st_size
        if got < size:
            raise TransferError(f"HTTP download ended early ({got} of {size} bytes); will resume", "http_failed")
        if sha256_file(part) != sha256:
            part.unlink(missing_ok=True)
            raise TransferError("downloaded archive does not match the signed sha256", "hash_mismatch")
        return _finish(part, dest)


class _StartOver(Exception):
    """The partial file cannot be continued (416, a wrong Content-Range): start from byte 0, once."""


def _usable_part(part: Path, size: int) -> int:
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # never keep more than was signed
        _truncate(part, 0)
        return 0
    return have


def _truncate(part: Path, n: int) -> None:
    with open(part, "ab") as f:
        f.truncate(n)


def _open(url: str, headers: dict[str, str], have: int, timeout: float):  # type: ignore[no-untyped-def]
    headers = {**headers, "Range": f"bytes={have}-"} if have else headers
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked by the caller
    try:
        return (_OPENER if req.type == "https" else _DIRECT).open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            raise _StartOver(f"server refused the range from byte {have} (HTTP 416)") from None
        if exc.code in (401, 403):
            why = "missing or wrong device token" if exc.code == 401 else "this package was not given to this device"
            raise TransferError(f"the package server refused this device's download credential (HTTP {exc.code}: "
                                f"{why}; see update.http_token_file and fleet device-token)",
                                "http_unauthorized") from None
        raise TransferError(f"HTTP download failed: HTTP {exc.code} {exc.reason}", "http_failed") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timeouts, a malformed URL or reply
        raise TransferError(f"HTTP download failed: {exc}", "http_failed") from None


def _start_offset(resp, have: int) -> int:  # type: ignore[no-untyped-def]
    """Where the body starts in the file: ``have`` for a matching 206, 0 for a 200 (Range ignored)."""
    if resp.status == 200:
        return 0
    if resp.status != 206 or not have:
        raise TransferError(f"HTTP download failed: unexpected HTTP {resp.status}", "http_failed")
    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
    if m is None or int(m.group(1)) != have:
        raise _StartOver(f"server answered Range {have}- with Content-Range {resp.headers.get('Content-Range')!r}")
    return have


def _fetch(url: str, headers: dict[str, str], part: Path, have: int, size: int, stop: threading.Event | None,
           timeout: float) -> None:
    with _open(url, headers, have, timeout) as resp:
        start = _start_offset(resp, have)
        length = resp.headers.get("Content-Length")
        if length is not None and length.isdigit() and start + int(length) > size:
            raise TransferError(f"server offers {start + int(length)} bytes, the signed document says {size}",
                                "http_oversize")
        try:
            with open(part, "r+b" if part.exists() else "wb") as out:
                out.truncate(start)
                out.seek(start)
                _copy(resp, out, size - start, stop)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError("no space left on device while downloading") from exc
            raise TransferError(f"HTTP download failed: {exc}", "http_failed") from exc
        except http.client.HTTPException as exc:  # e.g. IncompleteRead: the connection ended mid-body
            raise TransferError(f"HTTP download ended early: {exc!r}; will resume", "http_failed") from exc


def _copy(resp, out, room: int, stop: threading.Event | None) -> None:  # type: ignore[no-untyped-def]
    """Copy the body, at most ``room`` bytes; one byte more is a refusal (the file keeps only what fits)."""
    while True:
        if stop is not None and stop.is_set():
            raise TransferError("transfer interrupted", "interrupted")
        block = resp.read(min(_BLOCK, room + 1))
        if not block:
            return
        if len(block) > room:
            out.write(block[:room])
            raise TransferError("server sent more bytes than the signed size", "http_oversize")
        out.write(block)
        room -= len(block)


def _finish(part: Path, dest: Path) -> Path:
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest
