"""Helpers for end-to-end device tests: a device config file, HTTP scrapes, Prometheus text parsing."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

CLI = [sys.executable, "-m", "edge_runtime.cli"]


def write_config(path: Path, **sections: Any) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def get(url: str, timeout: float = 15.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback test URL
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def health(port: int) -> dict[str, Any]:
    code, body = get(f"http://127.0.0.1:{port}/health")
    assert code == 200, body
    return json.loads(body)


def wait_until(check: Callable[[], Any], timeout: float, proc: subprocess.Popen | None = None) -> Any:
    """Poll ``check`` until it returns something truthy (raising OSError counts as not yet); fail on timeout
    or if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"process exited early with {proc.returncode}: {err}")
        try:
            last = check()
        except OSError:
            last = None
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (labels must all match), or None."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


def terminate(proc: subprocess.Popen, timeout: float = 60.0) -> tuple[str, str]:
    """The graceful stop under test: SIGTERM, then wait for the process and collect its output."""
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=timeout)


def reap(proc: subprocess.Popen) -> None:
    """Make sure a test's subprocess is gone, also when the test failed before stopping it."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def stop_all(procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM every process first (they shut down side by side), then wait for each; kill what does not stop."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            reap(proc)
