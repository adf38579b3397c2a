"""Security figures (issue 11): hostile cases per surface, against the real code and real processes.

    .venv/bin/python benchmarks/security_figures.py [--only serve,udp,stdin,desired,chunks,manifests,archives]
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
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime.benchmark.machine import machine_summary  # noqa: E402
from edge_runtime.errors import PackageError  # noqa: E402
from edge_runtime.package import load_package, load_private_key  # noqa: E402
from edge_runtime.package.signing import TrustStore, sign_bytes  # noqa: E402
from edge_runtime.sources.windowing import MAX_LINE_BYTES, parse_line  # noqa: E402
from edge_runtime.sync.topics import Topics  # noqa: E402
from edge_runtime.update.desired import DesiredModel, open_desired, sign_desired  # noqa: E402
from edge_runtime.update.errors import TransferError, VerificationError  # noqa: E402
from edge_runtime.update.transfer import ChunkDownloader, TransferSettings, build_meta  # noqa: E402
from tests.integration.helpers import CLI, health, reap, wait_until  # noqa: E402
from tests.mqtt_broker import free_port  # noqa: E402
from tests.security import hostile  # noqa: E402
from tests.security.procs import MIB, in_threads, memory, serve, signed_packages  # noqa: E402

GOAL_MIB = 50.0
HOSTILE_VALUES = [None, True, -1, 0, 10**40, 1e308, float("nan"), float("inf"), "", "x" * 10000, "../../etc",
                  [], {}, [[[[[]]]]], {"a": {"b": {}}}, "\x00", "é", 2**63]  # fmt: skip


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


def mutations(valid: dict, rng: np.random.Generator, n: int) -> list[bytes]:
    """``n`` copies of ``valid`` with one field replaced by a hostile value, deleted, or added."""
    out = []
    for _ in range(n):
        doc, key = dict(valid), sorted(valid)[int(rng.integers(len(valid)))]
        action = int(rng.integers(3))
        if action == 0:
            doc[key] = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
        elif action == 1:
            del doc[key]
        else:
            doc[f"extra{int(rng.integers(100))}"] = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
        out.append(json.dumps(doc).encode())
    return out


def json_bombs() -> list[bytes]:
    return [hostile.deep_json(100_000), hostile.deep_json(100_000, b'{"a":'), b"", b"null", b"[]", b"\xff\xfe",
            b"9" * 100_000, b'{"a": ' + b"1e999" + b"}", b"NaN"]  # fmt: skip


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
def image_cases(rng: np.random.Generator, n: int) -> list[bytes]:
    frame = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    valid = [cv2.imencode(ext, frame)[1].tobytes() for ext in (".png", ".jpg", ".bmp")]
    cases = [hostile.png_bomb(), hostile.png_header_only(60000, 60000), hostile.jpeg_sof(30000, 30000),
             hostile.bmp_header(20000, -20000), hostile.png_header_only(64, 64), hostile.jpeg_sof(64, 64),
             b"GIF89a" + bytes(100), b"RIFF\0\0\0\0WEBPVP8 ", b"II*\0" + bytes(100)]  # fmt: skip
    for _ in range(n):
        data = bytearray(valid[int(rng.integers(3))])
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        cases.append(bytes(data[: int(rng.integers(len(data) // 2, len(data) + 1))]))
    return cases


def body_cases() -> list[tuple[str, bytes]]:
    multipart = "multipart/form-data; boundary=b"
    return [("application/json", b) for b in json_bombs()] + [
        ("application/json", b"[" + b",".join([b"[NaN, 1]"] * 4) + b"]"),
        ("application/json", b"[[[1e39, 0, 0]]]"), ("application/json", b'[["a", "b"]]'),
        ("application/json", b"[" * 8_000_000 + b"]" * 8_000_000),  # 16 MB of nesting: at the body limit
        ("application/json", b"0" * (16 * MIB + 1)),  # over the body limit
        ("application/json", b"[" + b"0.5," * (4 * MIB - 1) + b"0]"),  # 16 MiB of numbers: 200+ MiB once parsed
        (multipart, b"--b\r\n\r\n--b--"), (multipart, b"garbage"), ("multipart/form-data", b"x"),
        (multipart, b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
                    b"Content-Transfer-Encoding: base64\r\n\r\n!!!!\r\n--b--\r\n"),
        ("text/plain", b"x"), ("image/png", b""), ("", b"\x00" * 1000),
    ]  # fmt: skip


def _timed(call: Callable[[], object]) -> float:
    t = time.perf_counter()
    call()
    return time.perf_counter() - t


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
        idle_healthz = max(_timed(lambda: httpx.get(f"{s.url}/healthz", timeout=30)) for _ in range(20))
        for case in image_cases(rng, n):
            images.add(*outcome_of(lambda c=case: post(s.url, "image/png", c)))
        # four clients with five bombs each while /healthz is polled
        bomb, slowest = hostile.png_bomb(), 0.0
        done = threading.Event()

        def bombs(_: int) -> list[tuple[str, str]]:
            return [outcome_of(lambda: post(s.url, "image/png", bomb)) for _ in range(5)]

        def poll() -> None:
            nonlocal slowest
            while not done.is_set():
                slowest = max(slowest, _timed(lambda: httpx.get(f"{s.url}/healthz", timeout=30)))

        poller = threading.Thread(target=poll)
        poller.start()
        for result in in_threads(bombs, range(4)):
            for outcome in result if isinstance(result, list) else [("crashed", repr(result))]:
                images.add(*outcome)
        done.set()
        poller.join()
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
def line_cases(rng: np.random.Generator, n: int) -> list[bytes]:
    cases = [hostile.deep_json(60000), hostile.deep_json(12000, b'{"a":'), b"1e999,1,1", b"nan,1,2",
             b'{"x": "walk", "y": [1, 2], "z": null}', b"[" + b"9" * 5000 + b", 1, 2]", b"\xff\xfe\x00garbage",
             b"1,2", b"1,2,3,4", b'{"a": {"b": 1}, "c": 2, "d": 3}']  # fmt: skip
    tokens = [b"1", b"-2.5", b"1e999", b"nan", b"inf", b"x", b"[", b"]", b"{", b"}", b'"a":', b",", b" ", b"null"]
    for _ in range(n):
        cases.append(b"".join(tokens[int(i)] for i in rng.integers(len(tokens), size=int(rng.integers(1, 12)))))
    return [c.replace(b"\n", b" ").replace(b"\r", b" ") for c in cases]


def expected_bad(cases: list[bytes]) -> int:
    def bad(line: bytes) -> bool:
        text = line.strip()
        if not text or text.startswith(b"#"):
            return False
        values = parse_line(line) if len(line) <= MAX_LINE_BYTES else None
        return values is None or values.size != 3

    return sum(bad(c) for c in cases)


WINDOW = b"".join(b"%d,0.5,-0.25\n" % i for i in range(16))


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


def archive_cases(pkgs: dict, work: Path, bomb_mib: int) -> dict[str, Path]:
    """Hostile archives beside a good signed one: truncated, not a tar, a gzip bomb (the signed manifest and
    signature first, then model.onnx declaring ``bomb_mib`` MiB of zeros), a path-traversal and a symlink member."""
    from edge_runtime.package.store import pack_archive

    good = pack_archive(pkgs["classifier"], work / "good.erpkg")
    raw = good.read_bytes()
    with tarfile.open(good) as tar:
        model_at = tar.getmember("model.onnx").offset
    info = tarfile.TarInfo("model.onnx")
    info.size = bomb_mib * MIB
    contents = {"truncated": raw[: len(raw) // 2], "not a tar": b"x" * 4096,
                "gzip bomb": hostile.gzip_of_zeros_after(raw[:model_at] + info.tobuf(format=tarfile.PAX_FORMAT),
                                                         bomb_mib * MIB, bytes(1024))}  # fmt: skip
    paths = {}
    for name, data in contents.items():
        paths[name] = work / f"{name.replace(' ', '-')}.erpkg"
        paths[name].write_bytes(data)
    for name, member in (("path traversal", "../evil"), ("symlink", "link")):
        p = paths[name] = work / f"{name.replace(' ', '-')}.erpkg"
        shutil.copy(good, p)
        with tarfile.open(p, "a") as tar:
            ti = tarfile.TarInfo(member)
            if name == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(ti, io.BytesIO(b""))
    return paths


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


SURFACES = ["serve", "udp", "stdin", "desired", "chunks", "manifests", "archives"]


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
