"""Security figures (issue 11): hostile cases per surface, against the real code and real processes.

    .venv/bin/python benchmarks/security_figures.py [--only serve,udp,stdin,desired,commands,chunks,
                                                    manifests,archives]
                                                    [--random 200] [--bomb-mib 256]

Per surface it prints the cases tried and their outcomes: refused (the documented error, or a 4xx/503), accepted
(a valid input), crashed (anything else: a 5xx, a traceback, a dead process or thread, a refusal of more than one
line; must be 0). For `serve` and `run` it prints the peak resident memory (the kernel's VmHWM, or the ru_maxrss of
a finished child) under the bomb and oversize cases against the same process idle; the goal is under +50 MiB,
"MISS" when missed; and serve's slowest /healthz while four clients send bombs, against idle. Fixed seeds; the
machine (with its load) is printed first. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.security_cases import (  # noqa: E402
    WINDOW,
    archive_cases,
    body_cases,
    expected_bad,
    image_cases,
    json_bombs,
    line_cases,
    mutations,
)
from edge_runtime.benchmark.machine import machine_summary  # noqa: E402
from edge_runtime.errors import PackageError  # noqa: E402
from edge_runtime.package import load_package, load_private_key  # noqa: E402
from edge_runtime.package.signing import TrustStore, sign_bytes  # noqa: E402
from edge_runtime.sync.topics import Topics  # noqa: E402
from edge_runtime.update.desired import DesiredModel, open_desired, sign_desired  # noqa: E402
from edge_runtime.update.errors import TransferError, VerificationError  # noqa: E402
from edge_runtime.update.transfer import ChunkDownloader, TransferSettings, build_meta  # noqa: E402
from tests.integration.helpers import CLI, health, reap, wait_until  # noqa: E402
from tests.mqtt_broker import free_port  # noqa: E402
from tests.security import hostile  # noqa: E402
from tests.security.procs import MIB, in_threads, memory, serve, signed_packages  # noqa: E402

GOAL_MIB = 50.0


@dataclass
class Tally:
    surface: str
    tried: int = 0
    refused: int = 0
    accepted: int = 0
    crashed: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, outcome: str, note: str = "") -> None:
        self.tried += 1
        setattr(self, outcome, getattr(self, outcome) + 1)
        if outcome == "crashed" and len(self.examples) < 3:
            self.examples.append(note[:160])

    def line(self) -> str:
        flag = "" if self.crashed == 0 else "   MISS (crashed must be 0): " + " | ".join(self.examples)
        return (f"{self.surface:<16} tried {self.tried:>5}  refused {self.refused:>5}  accepted {self.accepted:>4}  "
                f"crashed {self.crashed:>3}{flag}")  # fmt: skip


def rss_line(what: str, idle: int, peak: int) -> str:
    growth = (peak - idle) / MIB
    verdict = "ok" if growth < GOAL_MIB else "MISS"
    return (f"{what:<44} idle {idle / MIB:7.1f} MiB  peak {peak / MIB:7.1f} MiB  "
            f"(+{growth:.1f} MiB, goal <+{GOAL_MIB:.0f}: {verdict})")


def in_process(tally: Tally, cases: list[bytes], fn: Callable[[bytes], object], refusal: type[Exception]) -> None:
    for case in cases:
        try:
            fn(case)
        except refusal:
            tally.add("refused")
        except Exception as exc:  # noqa: BLE001 - the figure counts it
            tally.add("crashed", f"{type(exc).__name__}: {exc}")
        else:
            tally.add("accepted")


# ------------------------------------------------------------------ serve


# /healthz is timed from its own process: a poller thread here would share the GIL with the bomb clients and time
# them, not serve.
_POLLER = ("import http.client, sys, time\n"
           "for _ in range(int(sys.argv[2])):\n"
           "    t = time.perf_counter(); c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]), timeout=60)\n"
           "    c.request('GET', '/healthz'); c.getresponse().read(); c.close()\n"
           "    print(time.perf_counter() - t, flush=True)\n")


def healthz_poller(port: int, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _POLLER, str(port), str(count)], stdout=subprocess.PIPE, text=True)


def slowest_of(poller: subprocess.Popen, stop: bool = False) -> float:
    if stop:
        poller.terminate()
    out = poller.communicate(timeout=120)[0].split()
    return max(map(float, out), default=float("nan"))


def post(url: str, ctype: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{url}/predict", content=body, headers={"content-type": ctype} if ctype else {}, timeout=120)


def outcome_of(call: Callable[[], httpx.Response]) -> tuple[str, str]:
    try:
        r = call()
    except httpx.HTTPError as exc:
        return "crashed", f"{type(exc).__name__}: {exc}"
    if r.status_code == 200:
        return "accepted", ""
    if r.status_code < 500 or r.status_code == 503:
        return "refused", ""
    return "crashed", f"HTTP {r.status_code}: {r.text}"


def serve_surfaces(pkgs: dict, rng: np.random.Generator, n: int) -> list[str]:
    images, bodies = Tally("serve images"), Tally("serve bodies")
    lines = []
    with serve(pkgs["classifier"], pkgs["key"], stderr=subprocess.DEVNULL) as s:
        good = cv2.imencode(".jpg", rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))[1].tobytes()
        for _ in range(5):
            post(s.url, "image/jpeg", good)
        idle = s.memory()["VmHWM"]
        idle_healthz = slowest_of(healthz_poller(s.port, 40))
        for case in image_cases(rng, n):
            images.add(*outcome_of(lambda c=case: post(s.url, "image/png", c)))
        # four clients with five bombs each while /healthz is polled
        bomb = hostile.png_bomb()

        def bombs(_: int) -> list[tuple[str, str]]:
            return [outcome_of(lambda: post(s.url, "image/png", bomb)) for _ in range(5)]

        poller = healthz_poller(s.port, 100_000)
        for result in in_threads(bombs, range(4)):
            for outcome in result if isinstance(result, list) else [("crashed", repr(result))]:
                images.add(*outcome)
        slowest = slowest_of(poller, stop=True)
        peak_images = s.memory()["VmHWM"]
        for ctype, body in body_cases():
            bodies.add(*outcome_of(lambda c=ctype, b=body: post(s.url, c, b)))
        if s.proc.poll() is not None:
            bodies.add("crashed", f"serve exited with {s.proc.returncode}")
        peak_bodies = s.memory()["VmHWM"]
    lines += [images.line(), bodies.line(), rss_line("serve peak RSS under image bombs", idle, peak_images),
              rss_line("serve peak RSS after the body cases too", idle, peak_bodies),
              f"{'serve /healthz slowest, 4 bomb clients running':<44} {slowest * 1000:7.1f} ms  "
              f"(idle: {idle_healthz * 1000:.1f} ms)"]
    return lines


# ------------------------------------------------------------------ sensors


def udp_surface(pkgs: dict, rng: np.random.Generator, n: int) -> list[str]:
    tally, udp, http, out = Tally("sensor UDP"), free_port(), free_port(), Path(tempfile.mkdtemp()) / "out.jsonl"
    proc = subprocess.Popen([*CLI, "run", "--package", str(pkgs["sensor"]), "--key", str(pkgs["key"]), "--source",
                             f"udp://127.0.0.1:{udp}", "--out", str(out), "--http", str(http)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        count = lambda: len(out.read_text().splitlines()) if out.exists() else 0  # noqa: E731

        def window_through(before: int) -> bool:
            sock.sendto(WINDOW, ("127.0.0.1", udp))
            return count() > before

        wait_until(lambda: window_through(0), 90, proc)
        idle = memory(proc.pid)["VmHWM"]
        cases = line_cases(rng, n)
        for c in cases:
            sock.sendto(c, ("127.0.0.1", udp))
            time.sleep(0.001)  # loopback UDP drops nothing at this pace
        want = expected_bad(cases)
        try:
            wait_until(lambda: health(http)["source"]["bad_lines"] >= want, 60, proc)
            done = count()
            wait_until(lambda: window_through(done), 60, proc)
            counted = health(http)["source"]["bad_lines"]
        except AssertionError as exc:
            counted = -1
            tally.add("crashed", str(exc))
        for i, _ in enumerate(cases):
            tally.add("refused" if i < want else "accepted")
        if counted not in (-1, want):
            tally.add("crashed", f"run counted {counted} bad lines, {want} expected")
        peak = memory(proc.pid)["VmHWM"]
    finally:
        sock.close()
        reap(proc)
    return [tally.line(), rss_line("run (UDP) peak RSS under hostile datagrams", idle, peak)]


# A child's ru_maxrss includes what it inherited at fork from this (large) process, so children are started from a
# small launcher that reports the peak of its own child: the true peak of the command.
_LAUNCHER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); _, s, u = os.wait4(p.pid, 0); "
             "print(u.ru_maxrss, file=sys.stderr); sys.exit(os.waitstatus_to_exitcode(s))")


def child_peak(cmd: list[str], stdin: bytes = b"", env: dict[str, str] | None = None) -> tuple[int, str, int]:
    """Run ``cmd`` fed ``stdin``; (exit code, its stderr, its peak RSS in bytes)."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
        inp.write(stdin)
        inp.seek(0)
        rc = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], stdin=inp, stdout=subprocess.DEVNULL,
                            stderr=err, env=env).returncode  # fmt: skip
        err.seek(0)
        text, _, peak = err.read().decode(errors="replace").rstrip("\n").rpartition("\n")
        return rc, text + "\n" if text else "", int(peak) * 1024


def stdin_surface(pkgs: dict, rng: np.random.Generator, n: int) -> list[str]:
    tally = Tally("sensor stdin")
    cmd = [*CLI, "run", "--package", str(pkgs["sensor"]), "--key", str(pkgs["key"]), "--source", "stdin"]
    _, _, idle = child_peak(cmd, WINDOW * 4)
    cases = [*line_cases(rng, n), b"1," * (32 * MIB)]  # and one 64 MiB line
    rc, err, peak = child_peak(cmd, WINDOW + b"\n".join(cases) + b"\n" + WINDOW)
    want = expected_bad(cases[:-1]) + 1
    for i, _ in enumerate(cases):
        tally.add("refused" if i < want else "accepted")
    if rc != 0 or "Traceback" in err or f"bad lines {want}," not in err:
        tally.add("crashed", f"exit {rc}: {err.strip().splitlines()[-1:]} (expected bad lines {want})")
    return [tally.line(), rss_line("run (stdin) peak RSS with a 64 MiB line", idle, peak)]


# ------------------------------------------------------------------ documents
def desired_surface(pkgs: dict, rng: np.random.Generator, n: int) -> list[str]:
    tally, key, trust = Tally("desired docs"), pkgs["private"], TrustStore.from_paths([pkgs["key"]])
    doc = DesiredModel(scope="device", target="cam-1", name="tiny", version="1.2.0", profile="x86-laptop",
                       package_id="ab" * 12, sha256="cd" * 32, size=1000, sequence=5, issued=1.0e9)  # fmt: skip
    envelope = json.loads(sign_desired(doc, key))
    cases = json_bombs() + mutations(envelope, rng, n // 2)
    for text in mutations(doc.model_dump(mode="json", by_alias=True), rng, n // 2) + json_bombs():
        sig = json.loads(sign_bytes(key, text))  # signed by a trusted key, hostile inside
        cases.append(json.dumps({"schema": "desired-envelope/1", "document": text.decode("utf-8", "replace"),
                                 "signature": sig}).encode())  # fmt: skip
    in_process(tally, cases, lambda c: open_desired(c, trust), VerificationError)
    return [tally.line()]


def command_surface(pkgs: dict, rng: np.random.Generator, n: int) -> list[str]:
    """The device's CommandHandler as the MQTT network thread calls it: refused = counted and reported."""
    from edge_runtime.sync.commands import CommandHandler, new_command, sign_command
    from edge_runtime.sync.replay import SequenceStore

    tally, key, work = Tally("commands"), pkgs["private"], Path(tempfile.mkdtemp())
    reports: list[dict] = []
    handler = CommandHandler("cam-1", TrustStore.from_paths([pkgs["key"]], ["operator"]),
                             SequenceStore(work / "commands.json"), lambda _kind, body: reports.append(body))
    handler.register("upload_samples", lambda cmd: None)
    valid = new_command("cam-1", "upload_samples", max=5)
    cases = [*json_bombs(), sign_command(valid, key), sign_command(valid, key),  # the second one is a replay
             json.dumps({"command": "upload_samples", "max": 1000000}).encode()]  # the unsigned command
    cases += mutations(json.loads(sign_command(valid, key)), rng, n // 2)
    fields = valid.model_dump(mode="json", by_alias=True)
    for i in range(n // 2):  # signed by the trusted operator key, hostile inside, each with a fresh sequence
        text = mutations({**fields, "sequence": fields["sequence"] + 1 + i}, rng, 1)[0]
        env = {"schema": "command-envelope/1", "document": text.decode("utf-8", "replace"),
               "signature": json.loads(sign_bytes(key, text))}  # fmt: skip
        cases.append(json.dumps(env).encode())
    for case in cases:
        before = dict(handler.counters), len(reports)
        try:
            handler.on_message("edge/devices/cam-1/commands", case)
        except Exception as exc:  # noqa: BLE001 - the figure counts it
            tally.add("crashed", f"{type(exc).__name__}: {exc}")
            continue
        if handler.counters["rejected"] > before[0]["rejected"] and len(reports) > before[1]:
            tally.add("refused")
        elif handler.counters["accepted"] > before[0]["accepted"]:
            tally.add("accepted")
        else:
            tally.add("crashed", f"neither counted nor reported: {case[:80]!r}")
    shutil.rmtree(work)
    return [tally.line()]


def chunk_surface(pkgs: dict, rng: np.random.Generator, n: int) -> list[str]:
    from tests.security.hostile import MemoryLink

    tally, work = Tally("chunks + meta"), Path(tempfile.mkdtemp())
    archive = work / "a.erpkg"
    archive.write_bytes(rng.integers(0, 255, 10240, dtype=np.uint8).tobytes())
    meta, topics = build_meta(archive, chunk_size=2048), Topics()
    chunks = [archive.read_bytes()[i : i + 2048] for i in range(0, meta.size, 2048)]
    valid_meta = json.loads(meta.model_dump_json(by_alias=True))
    quick = TransferSettings(window=4, chunk_retries=1, resubscribe_s=0.05, stall_timeout_s=0.3)
    cases: list[tuple[bytes, list[bytes]]] = [(m, chunks) for m in json_bombs() + mutations(valid_meta, rng, n // 2)]
    for _ in range(n // 2):
        bad = list(chunks)
        i = int(rng.integers(len(bad)))
        bad[i] = [b"", bad[i] + b"x", bad[i][:-1], bytes(16 * MIB), rng.bytes(2048)][int(rng.integers(5))]
        cases.append((meta.model_dump_json(by_alias=True).encode(), bad))

    def download(case: tuple[bytes, list[bytes]]) -> None:
        retained = {topics.package_meta(meta.package_id): case[0]}
        retained.update({topics.package_chunk(meta.package_id, i): c for i, c in enumerate(case[1])})
        dest = Path(tempfile.mkdtemp(dir=work))
        got = ChunkDownloader(MemoryLink(retained), topics, dest, meta.package_id, meta.sha256, meta.size, quick).run()
        if got.read_bytes() != archive.read_bytes():
            raise AssertionError("accepted other bytes than the signed archive")

    in_process(tally, cases, download, TransferError)  # type: ignore[arg-type]
    shutil.rmtree(work)
    return [tally.line()]


def manifest_surface(pkgs: dict, rng: np.random.Generator, n: int) -> list[str]:
    tally, trust, work = Tally("manifests"), TrustStore.from_paths([pkgs["key"]]), Path(tempfile.mkdtemp())
    valid = json.loads((pkgs["classifier"] / "manifest.json").read_bytes())

    def load_with(manifest: bytes) -> None:
        dest = Path(tempfile.mkdtemp(dir=work)) / "pkg"
        shutil.copytree(pkgs["classifier"], dest)
        (dest / "manifest.json").write_bytes(manifest)
        (dest / "signature.json").write_bytes(sign_bytes(pkgs["private"], manifest))  # signed: validation stands
        load_package(dest, trust=trust)

    in_process(tally, json_bombs() + mutations(valid, rng, n), load_with, PackageError)
    shutil.rmtree(work)
    return [tally.line()]


def archive_surface(pkgs: dict, bomb_mib: int) -> list[str]:
    tally, work = Tally("archives"), Path(tempfile.mkdtemp())
    cache = work / "cache"
    env = {**os.environ, "EDGE_RUNTIME_CACHE": str(cache)}
    peaks = []
    for name, path in archive_cases(pkgs, work, bomb_mib).items():
        rc, text, peak = child_peak([*CLI, "verify", str(path), "--key", str(pkgs["key"])], env=env)
        peaks.append(peak)
        if rc == 2 and "Traceback" not in text and text.count("\n") == 1:
            tally.add("refused")
        else:
            tally.add("crashed", f"{name}: exit {rc}: {text.strip()[-120:]}")
    left = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) if cache.exists() else 0
    shutil.rmtree(work)
    return [tally.line(), f"{'verify peak RSS, largest of the archive cases':<44} {max(peaks) / MIB:7.1f} MiB",
            f"{'left in the extraction cache after refusals':<44} {left / MIB:7.1f} MiB "
            f"({'ok' if left == 0 else 'MISS'}: a {bomb_mib} MiB bomb was tried)"]


SURFACES = ["serve", "udp", "stdin", "desired", "commands", "chunks", "manifests", "archives"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(SURFACES)}")
    ap.add_argument("--random", type=int, default=200, help="random mutated cases per surface (default 200)")
    ap.add_argument("--bomb-mib", type=int, default=256, help="inflated size of the archive bomb (default 256)")
    args = ap.parse_args()
    only = args.only.split(",") if args.only else SURFACES
    logging.disable(logging.WARNING)  # the refusals log their warnings: thousands of lines, not figures
    print(machine_summary())
    with tempfile.TemporaryDirectory() as tmp:
        pkgs = signed_packages(Path(tmp))
        pkgs["private"] = load_private_key(Path(tmp) / "keys" / "release.key")
        steps: dict[str, Callable[[], list[str]]] = {
            "serve": lambda: serve_surfaces(pkgs, np.random.default_rng(1), args.random),
            "udp": lambda: udp_surface(pkgs, np.random.default_rng(2), args.random),
            "stdin": lambda: stdin_surface(pkgs, np.random.default_rng(3), args.random),
            "desired": lambda: desired_surface(pkgs, np.random.default_rng(4), args.random),
            "commands": lambda: command_surface(pkgs, np.random.default_rng(7), args.random),
            "chunks": lambda: chunk_surface(pkgs, np.random.default_rng(5), min(args.random, 60)),
            "manifests": lambda: manifest_surface(pkgs, np.random.default_rng(6), args.random),
            "archives": lambda: archive_surface(pkgs, args.bomb_mib),
        }
        for name in only:
            for line in steps[name]():
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
