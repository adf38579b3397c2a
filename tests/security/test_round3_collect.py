"""Round 3: a signed collection policy's ``command`` redaction runs a program on every device that keeps samples,
whether or not it opted in to uploads. Anyone with the operator role on the fleet server (which signs policies
with its operator key) could so run any program on every such device. A device now runs only the redaction
programs its own config names (``monitor.samples.redact_commands``); any other drops the sample, as a failing
redaction does (nothing is kept unredacted)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.monitoring.collect import CollectionPolicy, Redaction
from edge_runtime.monitoring.config import MonitorConfig, SampleConfig
from edge_runtime.monitoring.monitor import Monitor
from tests.monitoring.helpers import frame_result


def _kept(tmp_path: Path, allowed: tuple[str, ...], marker: Path) -> tuple[list[dict], int]:
    cfg = MonitorConfig(period_s=3600, system=False, samples=SampleConfig(
        directory=tmp_path / "s", low_confidence=None, min_interval_s=0, redact_commands=allowed))
    mon = Monitor(cfg, None)
    script = f"import sys; open({str(marker)!r}, 'w'); sys.stdout.buffer.write(sys.stdin.buffer.read())"
    try:
        assert mon.collection is not None
        mon.collection.set_policy(CollectionPolicy(low_confidence=0.5, random_rate=0.0, dedup=None, redact=(
            Redaction(kind="command", argv=(sys.executable, "-c", script)),)), False)
        frame = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        mon(frame_result(1, frame, confidence=0.1))
        mon.samples.flush()  # type: ignore[union-attr]
        return mon.samples.list(), mon.samples.redaction_failed  # type: ignore[union-attr]
    finally:
        mon.close()


def test_a_policy_runs_no_program_the_device_config_does_not_name(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    kept, failed = _kept(tmp_path, (), marker)
    assert not marker.exists() and kept == [] and failed == 1


def test_a_program_the_device_names_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    kept, failed = _kept(tmp_path, (sys.executable,), marker)
    assert marker.exists() and len(kept) == 1 and failed == 0


def test_a_redaction_command_is_bounded_in_output_lifetime_and_environment(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A program flooding stdout is cut at the limit (never buffered whole); one leaving a child behind has its whole
    process group killed at the timeout; the agent's environment (tokens, secrets) is not passed on."""
    import os
    import time

    from edge_runtime.monitoring.collect import Redaction
    from edge_runtime.monitoring.redact import RedactionError, Redactor

    img = np.zeros((8, 8, 3), np.uint8)
    flood = "import sys\nwhile True: sys.stdout.buffer.write(b'x' * 65536)"
    with pytest.raises(RedactionError, match=r"\+ bytes \(limit 100000\)"):
        Redactor([Redaction(kind="command", argv=(sys.executable, "-c", flood), max_output_bytes=100_000,
                            timeout_s=5)])(img)
    pid_file = tmp_path / "child.pid"
    leave = (f"import subprocess, sys\np = subprocess.Popen(['sleep', '60'])\nopen({str(pid_file)!r}, 'w')"
             f".write(str(p.pid))\nsys.stdin.buffer.read()\nimport time\ntime.sleep(60)")
    with pytest.raises(RedactionError, match="timed out"):
        Redactor([Redaction(kind="command", argv=(sys.executable, "-c", leave), timeout_s=1.0)])(img)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child}") and \
            open(f"/proc/{child}/stat").read().split()[2] != "Z":
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z"
    monkeypatch.setenv("EDGE_SECRET_TOKEN", "s3cret")
    env_dump = tmp_path / "env.txt"
    script = f"import os, sys\nopen({str(env_dump)!r}, 'w').write(repr(dict(os.environ)))\nsys.exit(1)"
    with pytest.raises(RedactionError, match="exited 1"):
        Redactor([Redaction(kind="command", argv=(sys.executable, "-c", script))])(img)
    assert "s3cret" not in env_dump.read_text()
