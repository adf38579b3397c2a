"""The user's training command, run here (its own process group, bounded time, log kept) or by a remote worker.

The contract is the pruning fine-tune's (converters.optimize.finetune): ``{data}``, ``{model}``, ``{output}`` in
the command line, and ``EDGE_TRAIN_DATA``, ``EDGE_TRAIN_MODEL``, ``EDGE_TRAIN_OUTPUT`` in its environment; the data
folder holds ``train.npz``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from converters.optimize.finetune import ENV_DATA, ENV_MODEL, ENV_OUTPUT
from fleet.retrain import RetrainError

LOG_TAIL = 1 << 20  # what the API returns of a log at most


@dataclass
class RunDir:
    """One run's folder under the server's data folder."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def parent_model(self, suffix: str) -> Path:
        return self.root / f"parent{suffix}"

    def output(self, suffix: str) -> Path:
        return self.root / "trained" / f"model{suffix}"

    @property
    def log(self) -> Path:
        return self.root / "train.log"


def argv_env(cmd: str, data: Path, model: Path, output: Path) -> tuple[list[str], dict[str, str]]:
    paths = {"data": str(data), "model": str(model), "output": str(output)}
    try:
        argv = [part.format(**paths) for part in shlex.split(cmd)]
    except (ValueError, KeyError, IndexError) as exc:
        raise RetrainError(f"bad training command {cmd!r}: {exc} (placeholders: {{data}} {{model}} {{output}})") \
            from None
    env = {**os.environ, ENV_DATA: paths["data"], ENV_MODEL: paths["model"], ENV_OUTPUT: paths["output"]}
    return argv, env


@dataclass
class Job:
    """A training command running in its own process group; ``rc`` is set when it ended (-9: killed)."""

    proc: subprocess.Popen[bytes]
    deadline: float
    rc: int | None = None
    timed_out: bool = False
    done: threading.Event = field(default_factory=threading.Event)


def start(cmd: str, rd: RunDir, suffix: str, timeout_s: float, cwd: Path | None, attempt: int) -> Job:
    out = rd.output(suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    argv, env = argv_env(cmd, rd.data, rd.parent_model(suffix), out)
    with rd.log.open("ab") as log:
        log.write(f"--- attempt {attempt}: {shlex.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,  # noqa: S603 - the policy's
                                    cwd=cwd or rd.root, start_new_session=True)
        except OSError as exc:
            raise RetrainError(f"cannot start the training command: {exc}") from None
    job = Job(proc, time.time() + timeout_s)
    threading.Thread(target=_wait, args=(job,), name=f"train-{proc.pid}", daemon=True).start()
    return job


def _wait(job: Job) -> None:
    try:
        job.rc = job.proc.wait(max(0.0, job.deadline - time.time()))
    except subprocess.TimeoutExpired:
        job.timed_out = True
        kill_group(job.proc.pid)
        job.rc = job.proc.wait()
    job.done.set()


def kill_group(pid: int | None) -> None:
    """End a training command and its children (its own session); nothing when it is gone already."""
    if not pid:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, limit: int = LOG_TAIL) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def last_lines(path: Path, n: int = 5) -> str:
    lines = [ln for ln in tail(path, 64 << 10).splitlines() if ln.strip() and not ln.startswith("--- attempt")]
    return " | ".join(lines[-n:])[-600:]
