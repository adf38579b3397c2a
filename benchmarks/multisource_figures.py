"""Issue-18 figures: several sources on one device with one loaded model, against a hand-written loop.

    .venv/bin/python benchmarks/multisource_figures.py [--cache DIR] [--frames 300]

Model: MobileNetV2-224 int8 QDQ ONNX (benchmarks/suite_models.py, cached in --cache), 1 inference thread.
Input: a 640x480 MJPG clip written here (seeded moving pattern). Every figure is measured in this run, in a
fresh `edge-runtime run` process (CPU = user + system time of the child, peak memory = its max RSS):

1. single source, unpaced: `run` vs a hand-written loop (OpenCV decode -> resize -> onnxruntime -> argmax):
   CPU time per frame (goal <= 1.05x), wall (goal <= 1.0x) and peak memory (goal <= +20 MiB)
2. 1, 2, 4 files unpaced: total throughput vs the model's own back-to-back rate
3. 1, 2, 4 files at 30 fps and 1, 2, 4 MJPEG streams (local server, 30 fps): per-source share min/max, p95
   end-to-end latency, CPU per frame, peak memory of the one process vs N separate single-source processes
The load average is printed beside each figure: on a shared machine the ratios taken in the same run are the
meaningful ones. Nothing is asserted; a missed goal reads MISS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_runtime.api import load  # noqa: E402
from tests.sources.media import MjpegServer  # noqa: E402

HAND = r"""
import sys, cv2, numpy as np, onnxruntime as ort
path, model, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0]; name = inp.name; nhwc = inp.shape[-1] == 3
cap = cv2.VideoCapture(path); n = 0
while True:
    ok, f = cap.read()
    if not ok or n >= limit: break
    x = cv2.cvtColor(cv2.resize(f, (224, 224), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    x = x.astype(np.float32) / 127.5 - 1.0 if "float" in inp.type else (x.astype(np.int16) - 128).astype(np.int8)
    x = x[None] if nhwc else np.transpose(x, (2, 0, 1))[None]
    int(np.argmax(s.run(None, {name: x})[0])); n += 1
print(n)
"""


def load_avg() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def write_clip(path: Path, frames: int) -> Path:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    for i in range(frames):
        out.write(np.roll(base, 4 * i, axis=1))
    out.release()
    return path


def child(cmd: list[str], timeout: float = 600) -> dict[str, float]:
    """Run ``cmd``; its wall time, CPU (user + system) and peak RSS (MiB), from wait4's rusage."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:4]} failed: {err[-500:]}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "sys": ru.ru_stime, "rss": ru.ru_maxrss / 1024,
            "out": out}  # type: ignore[dict-item]


def run_cmd(pkg: Path, sources: list[str], out: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "edge_runtime.cli", "run", "--package", str(pkg), "--threads", "1",
           "--out", str(out), "--no-summary", "--allow-unsigned", *extra]
    for i, s in enumerate(sources):
        cmd += ["--source", f"s{i}={s}"]
    return cmd


def results(out: Path) -> dict[str, list[float]]:
    by: dict[str, list[float]] = {}
    for line in out.read_text().splitlines():
        r = json.loads(line)
        by.setdefault(r["source"], []).append(r["latency_ms"]["end_to_end"])
    return by


def steady_fps(out: Path) -> float:
    """Results per second between the first and the last result (start-up and model load left out): each
    result's capture timestamp plus its end-to-end latency is when it was ready."""
    ready = sorted(r["timestamp"] + r["latency_ms"]["end_to_end"] / 1000 for r in map(json.loads,
                                                                                     out.read_text().splitlines()))
    return (len(ready) - 1) / (ready[-1] - ready[0]) if len(ready) > 1 and ready[-1] > ready[0] else 0.0


def mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def classifier_package(raw_pkg: Path) -> Path:
    """The suite's int8 MobileNetV2 as an ImageNet-style classifier (top-1 class per frame, as the hand-written
    loop's argmax): the same model file, classification decoding instead of the suite's raw 1,000 scores."""
    from edge_runtime.package.store import write_package

    out = raw_pkg.parent / f"{raw_pkg.name}_top1"
    if (out / "manifest.json").is_file():
        return out
    fields = json.loads((raw_pkg / "manifest.json").read_text())
    fields.pop("files", None)
    out_name = fields["outputs"]["tensors"][0]["name"]
    fields["outputs"] = {**fields["outputs"], "task": "classification",
                         "decoding": {"type": "classification", "output": out_name, "top_k": 1}}
    fields["name"] += "-top1"
    write_package(out, {fields["model_file"]: raw_pkg / fields["model_file"]}, fields, overwrite=True)
    return out


def model_rate(pkg: Path) -> float:
    m = load(pkg, threads=1, allow_unsigned=True)  # a benchmark build, hashes checked
    x = m.prepare(np.zeros((480, 640, 3), np.uint8))
    for _ in range(20):
        m.predict_prepared(x)
    t0 = time.perf_counter()
    for _ in range(200):
        m.predict_prepared(x)
    rate = 200 / (time.perf_counter() - t0)
    m.close()
    return rate


def streams_figures(pkg: Path, tmp: Path, clip: Path, n: int, live: bool, seconds: float, single_rss: float) -> None:
    servers = [MjpegServer(fps=30, hw=(480, 640)).start() for _ in range(n)] if live else []
    try:
        srcs = [s.url for s in servers] if live else [str(clip)] * n
        out = tmp / f"r{n}{live}.jsonl"
        extra = ["--duration", str(seconds)] if live else ["--fps-limit", "30"]
        c = child(run_cmd(pkg, srcs, out, extra))
    finally:
        for s in servers:
            s.stop()
    by = results(out)
    counts = [len(by.get(f"s{i}", [])) for i in range(n)]
    e2e = np.concatenate([np.asarray(v) for v in by.values()]) if by else np.zeros(1)
    total = sum(counts)
    fps = steady_fps(out)
    kind = "MJPEG streams" if live else "files @30fps"
    print(f"{n} {kind:<13}: {fps:6.1f} fps total (first to last result), share min/max "
          f"{min(counts)}/{max(counts)} frames, p95 e2e {np.percentile(e2e, 95):6.1f} ms, "
          f"CPU {c['cpu'] / max(total, 1) * 1000:5.2f} ms/frame incl. start-up, "
          f"peak {c['rss']:5.0f} MiB vs {n} processes ~{single_rss * n:5.0f} MiB ({load_avg()})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edge-runtime" / "bench")
    ap.add_argument("--frames", type=int, default=300, help="frames of the single-source comparison")
    ap.add_argument("--multi-frames", type=int, default=120, help="frames per source in figures 2 and 3")
    a = ap.parse_args()
    pkg = a.cache / "packages" / "mobilenet_v2_int8_onnx"
    if not (pkg / "manifest.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite_models.py"), str(a.cache)], check=True)
    onnx = next(pkg.glob("*.onnx"))
    cores = os.cpu_count()
    print(f"machine: {cores} cores, {load_avg()} (figures taken under the load other work puts on it)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        clip = write_clip(tmp / "clip.avi", a.frames)
        short = write_clip(tmp / "short.avi", a.multi_frames)
        rate = model_rate(pkg)
        print(f"model's own rate (predict_prepared back to back, 1 thread): {rate:.1f} fps ({load_avg()})")
        n = a.frames
        hand = [child([sys.executable, "-c", HAND, str(clip), str(onnx), str(n)]) for _ in range(3)]
        ours = [child(run_cmd(pkg, [str(clip)], tmp / "one.jsonl", [])) for _ in range(3)]
        med = {k: (float(np.median([h[k] for h in hand])), float(np.median([o[k] for o in ours])))
               for k in ("cpu", "sys", "wall", "rss")}
        # fixed cost (start-up, imports, verification, load, first frame): the same commands on one frame
        fixed = (child([sys.executable, "-c", HAND, str(clip), str(onnx), "1"]),
                 child(run_cmd(pkg, [str(clip)], tmp / "f.jsonl", ["--max-frames", "1"])))
        per = [(med["cpu"][i] - fixed[i]["cpu"]) / (n - 1) * 1000 for i in (0, 1)]
        print(f"1. single source vs hand-written loop ({n} frames, medians of 3, {load_avg()}):")
        print(f"   CPU/frame after start-up (each minus its own 1-frame run) {per[1]:.2f} vs {per[0]:.2f} ms = "
              f"{per[1] / per[0]:.2f}x (goal <= 1.05x) {mark(per[1] <= 1.05 * per[0])}; start-up CPU "
              f"{fixed[1]['cpu']:.2f} vs {fixed[0]['cpu']:.2f} s")
        print(f"   CPU/frame, whole process {med['cpu'][1] / n * 1000:.2f} vs {med['cpu'][0] / n * 1000:.2f} ms = "
              f"{med['cpu'][1] / med['cpu'][0]:.2f}x (goal <= 1.05x) {mark(med['cpu'][1] <= 1.05 * med['cpu'][0])}; "
              f"system {med['sys'][1]:.2f} vs {med['sys'][0]:.2f} s")
        print(f"   wall {med['wall'][1]:.2f} vs {med['wall'][0]:.2f} s = {med['wall'][1] / med['wall'][0]:.2f}x "
              f"(goal <= 1.0x) {mark(med['wall'][1] <= med['wall'][0])}")
        print(f"   peak memory {med['rss'][1]:.0f} vs {med['rss'][0]:.0f} MiB = +{med['rss'][1] - med['rss'][0]:.0f} "
              f"MiB (goal <= +20) {mark(med['rss'][1] - med['rss'][0] <= 20)}")
        print("2. unpaced files, total throughput vs the model's own rate:")
        for k in (1, 2, 4):
            c = child(run_cmd(pkg, [str(short)] * k, tmp / f"u{k}.jsonl", []))
            total = sum(len(v) for v in results(tmp / f"u{k}.jsonl").values())
            fps = steady_fps(tmp / f"u{k}.jsonl")
            print(f"   {k} source(s): {fps:6.1f} fps = {fps / rate * 100:5.1f}% of the model (first to last result), "
                  f"CPU {c['cpu'] / total * 1000:.2f} ms/frame incl. start-up ({load_avg()})")
        print("3. paced sources:")
        single = med["rss"][1]
        for live in (False, True):
            for k in (1, 2, 4):
                streams_figures(pkg, tmp, short, k, live, a.multi_frames / 30.0, single)
    print("batching across sources: off (no dynamic batch dimension in this model; not implemented)")
    print(f"own process: peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
