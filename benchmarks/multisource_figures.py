"""Issue-18 figures: several sources on one device with one loaded model, against a hand-written loop.

    .venv/bin/python benchmarks/multisource_figures.py [--cache DIR] [--frames 300] [--multi-frames 120]

Model: MobileNetV2-224 int8 QDQ ONNX (benchmarks/suite_models.py, cached in --cache) as a top-1 ImageNet-style
classifier (the same model file with classification decoding, as the hand-written loop's argmax), 1 inference
thread. Input: a 640x480 MJPG clip written here (seeded moving pattern). Every figure is measured in this run, in
fresh processes (CPU = user + system time of the child, peak memory = its max RSS, from wait4):

1. single source, unpaced: `run` vs a hand-written loop (OpenCV decode -> resize -> onnxruntime -> argmax),
   medians of 3: CPU time per frame (goal <= 1.05x), wall (goal <= 1.0x), peak memory (goal <= +20 MiB); then
   the same frames stage by stage (benchmarks/pipeline_stages.py: thread CPU per stage and per thread, medians)
2. 1, 2, 4 files unpaced: total throughput vs the model's own back-to-back rate
3. 1, 2, 4 files at 30 fps and 1, 2, 4 MJPEG streams (local server, 30 fps): per-source share min/max, p95
   end-to-end latency, CPU per frame and peak memory of the one process vs N separate single-source processes
   run side by side (their CPU and peak memory summed)
4. batching across sources: the same model file with a dynamic batch dimension; batch 1 vs 4 as the run's
   plan measures it, and 4 unpaced files with --batching off / on / auto
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
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.pipeline_stages import STAGES  # noqa: E402
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


# Linux keeps a process's peak RSS across execve: a child forked from this (large) process would report at
# least this process's RSS as its own peak. So each command starts from a bare interpreter (a few MiB), which
# waits for it and writes its rusage to the file named first.
LAUNCH = r"""
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "cpu": ru.ru_utime + ru.ru_stime, "sys": ru.ru_stime,
               "rss": ru.ru_maxrss / 1024}, f)
"""


# Children run as an installed product does: with compiled modules (pip writes .pyc files; a checkout run with
# PYTHONDONTWRITEBYTECODE=1 would compile every edge_runtime module at each start, ~0.2 s of CPU here), kept
# out of the tree. main() starts one run first to fill it.
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def children(cmds: list[list[str]]) -> list[dict[str, Any]]:
    """Run ``cmds`` side by side; each one's wall time, CPU (user + system), peak RSS (MiB) from wait4's rusage,
    and its stdout and stderr (read by threads, so a full pipe never blocks a child)."""
    t0 = time.perf_counter()
    usage = [Path(tempfile.mkstemp(suffix=".json")[1]) for _ in cmds]
    procs = [subprocess.Popen([sys.executable, "-S", "-c", LAUNCH, str(u), *c], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=CHILD_ENV)
             for u, c in zip(usage, cmds, strict=True)]
    texts: dict[int, list[str]] = {}

    def drain(i: int, p: subprocess.Popen) -> None:
        texts[i] = [p.stdout.read(), p.stderr.read()]  # type: ignore[union-attr]

    readers = [threading.Thread(target=drain, args=(i, p)) for i, p in enumerate(procs)]
    for r in readers:
        r.start()
    out = []
    for i, (cmd, p) in enumerate(zip(cmds, procs, strict=True)):
        p.wait()
        wall = time.perf_counter() - t0
        readers[i].join()
        ru = json.loads(usage[i].read_text() or "{}")
        usage[i].unlink()
        if p.returncode != 0 or ru.get("code") != 0:
            raise SystemExit(f"{cmd[:4]} failed: {texts[i][1][-500:]}")
        out.append({**ru, "wall": wall, "out": texts[i][0], "err": texts[i][1]})
    return out


def child(cmd: list[str]) -> dict[str, Any]:
    return children([cmd])[0]


def run_cmd(pkg: Path, sources: list[str], out: Path, extra: list[str] = ()) -> list[str]:  # type: ignore[assignment]
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


def dynamic_batch_package(pkg: Path) -> Path:
    """``pkg`` with the model file's first input and output dimension made dynamic (batching across sources)."""
    import onnx

    from edge_runtime.package.store import write_package

    out = pkg.parent / f"{pkg.name}_dynbatch"
    if (out / "manifest.json").is_file():
        return out
    fields = json.loads((pkg / "manifest.json").read_text())
    model = onnx.load(str(pkg / fields["model_file"]))
    for t in (*model.graph.input, *model.graph.output):
        dim = t.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "N"
    del model.graph.value_info[:]  # shapes inferred for batch 1 would contradict
    tmp = out.parent / f".{out.name}.onnx"
    onnx.save(model, str(tmp))
    fields.pop("files", None)
    fields["name"] += "-dynbatch"
    for spec in (*fields["inputs"], *fields["outputs"]["tensors"]):
        spec["shape"] = [-1, *spec["shape"][1:]]
    write_package(out, {fields["model_file"]: tmp}, fields, overwrite=True)
    tmp.unlink()
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


def single_source(pkg: Path, onnx: Path, clip: Path, tmp: Path, n: int) -> float:
    """Figure 1; returns the median peak memory of `run` (the single-process figure of 3)."""
    hand = [child([sys.executable, "-c", HAND, str(clip), str(onnx), str(n)]) for _ in range(3)]
    ours = [child(run_cmd(pkg, [str(clip)], tmp / "one.jsonl")) for _ in range(3)]
    med = {k: (float(np.median([h[k] for h in hand])), float(np.median([o[k] for o in ours])))
           for k in ("cpu", "sys", "wall", "rss")}
    # fixed cost (start-up, imports, verification, load, first frame): the same commands on one frame
    fixed = (child([sys.executable, "-c", HAND, str(clip), str(onnx), "1"]),
             child(run_cmd(pkg, [str(clip)], tmp / "f.jsonl", ["--max-frames", "1"])))
    per = [(med["cpu"][i] - fixed[i]["cpu"]) / (n - 1) * 1000 for i in (0, 1)]
    print(f"1. single source vs hand-written loop ({n} frames, medians of 3, {load_avg()}):")
    print(f"   CPU/frame after start-up (each minus its own 1-frame run) {per[1]:.2f} vs {per[0]:.2f} ms = "
          f"{per[1] / per[0]:.3f}x (goal <= 1.05x) {mark(per[1] <= 1.05 * per[0])}; start-up CPU "
          f"{fixed[1]['cpu']:.2f} vs {fixed[0]['cpu']:.2f} s")
    print(f"   CPU/frame, whole process {med['cpu'][1] / n * 1000:.2f} vs {med['cpu'][0] / n * 1000:.2f} ms = "
          f"{med['cpu'][1] / med['cpu'][0]:.3f}x (goal <= 1.05x) {mark(med['cpu'][1] <= 1.05 * med['cpu'][0])}; "
          f"system {med['sys'][1]:.2f} vs {med['sys'][0]:.2f} s")
    print(f"   wall {med['wall'][1]:.2f} vs {med['wall'][0]:.2f} s = {med['wall'][1] / med['wall'][0]:.3f}x "
          f"(goal <= 1.0x) {mark(med['wall'][1] <= med['wall'][0])}")
    print(f"   peak memory {med['rss'][1]:.0f} vs {med['rss'][0]:.0f} MiB = +{med['rss'][1] - med['rss'][0]:.0f} "
          f"MiB (goal <= +20) {mark(med['rss'][1] - med['rss'][0] <= 20)}; after one frame "
          f"{fixed[1]['rss']:.0f} vs {fixed[0]['rss']:.0f} MiB (start-up: imports, pydantic, signature check)")
    return med["rss"][1]


def stage_figures(pkg: Path, onnx: Path, clip: Path, n: int) -> None:
    """Figure 1, stage by stage: thread CPU per frame in each stage (medians of 3 fresh processes each)."""
    script = str(ROOT / "benchmarks" / "pipeline_stages.py")
    runs = {what: [json.loads(child([sys.executable, script, what, str(model), str(clip), str(n)])["out"])
                   for _ in range(3)] for what, model in (("hand", onnx), ("run", pkg))}

    def med(what: str, key: str) -> dict[str, float]:
        keys = runs[what][0][key]
        return {k: float(np.median([r[key].get(k, 0.0) for r in runs[what]])) for k in keys}

    hand, ours, threads = med("hand", "stages_us"), med("run", "stages_us"), med("run", "threads_us")
    print(f"   stage by stage, thread CPU us/frame after start-up (medians of 3, {load_avg()}):")
    print("     hand-written loop: " + ", ".join(f"{k} {v:.0f}" for k, v in hand.items())
          + f"; total {sum(hand.values()):.0f}")
    for _mod, _path, stage in STAGES:
        if stage in ours:
            print(f"     run: {stage:<48} {ours[stage]:7.0f}")
    print(f"     run: stages total {sum(ours.values()):.0f}; threads: " + ", ".join(f"{k} {v:.0f}"
                                                                                   for k, v in threads.items())
          + f"; total {sum(threads.values()):.0f} = {sum(threads.values()) / sum(hand.values()):.3f}x the loop")


def unpaced(pkg: Path, short: Path, tmp: Path, rate: float) -> None:
    print("2. unpaced files, total throughput vs the model's own rate:")
    for k in (1, 2, 4):
        c = child(run_cmd(pkg, [str(short)] * k, tmp / f"u{k}.jsonl"))
        total = sum(len(v) for v in results(tmp / f"u{k}.jsonl").values())
        fps = steady_fps(tmp / f"u{k}.jsonl")
        print(f"   {k} source(s): {fps:6.1f} fps = {fps / rate * 100:5.1f}% of the model (first to last result), "
              f"CPU {c['cpu'] / total * 1000:.2f} ms/frame incl. start-up ({load_avg()})")


def paced(pkg: Path, tmp: Path, clip: Path, n: int, live: bool, seconds: float) -> None:
    """Figure 3: one process serving n sources, then n single-source processes side by side on the same inputs."""
    servers = [MjpegServer(fps=30, hw=(480, 640)).start() for _ in range(n)] if live else []
    try:
        srcs = [s.url for s in servers] if live else [str(clip)] * n
        extra = ["--duration", str(seconds)] if live else ["--fps-limit", "30"]
        out = tmp / f"r{n}{live}.jsonl"
        c = child(run_cmd(pkg, srcs, out, extra))
        apart = children([run_cmd(pkg, [s], tmp / f"p{n}{live}{i}.jsonl", extra) for i, s in enumerate(srcs)])
    finally:
        for s in servers:
            s.stop()
    by = results(out)
    counts = [len(by.get(f"s{i}", [])) for i in range(n)]
    e2e = np.concatenate([np.asarray(v) for v in by.values()]) if by else np.zeros(1)
    total = sum(counts)
    apart_frames = sum(len(v) for i in range(n) for v in results(tmp / f"p{n}{live}{i}.jsonl").values())
    kind = "MJPEG streams" if live else "files @30fps"
    print(f"   {n} {kind:<13}: {steady_fps(out):6.1f} fps total, share min/max {min(counts)}/{max(counts)} frames, "
          f"p95 e2e {np.percentile(e2e, 95):6.1f} ms, CPU {c['cpu'] / max(total, 1) * 1000:5.2f} ms/frame incl. "
          f"start-up vs {sum(a['cpu'] for a in apart) / max(apart_frames, 1) * 1000:5.2f} in {n} processes, "
          f"peak {c['rss']:4.0f} MiB vs {sum(a['rss'] for a in apart):4.0f} MiB in {n} processes ({load_avg()})")


def batching(pkg: Path, short: Path, tmp: Path) -> None:
    from edge_runtime.batching import plan_batches

    dyn = dynamic_batch_package(pkg)
    m = load(dyn, threads=1, allow_unsigned=True)
    plan = plan_batches(m, 4, "auto", repeats=9)
    m.close()
    print(f"4. batching across sources (the model file with a dynamic batch dimension, 1 thread, {load_avg()}):")
    print(f"   plan at start: batch 1 {plan.single_ms:.2f} ms, batch 4 {plan.per_sample_ms:.2f} ms a frame -> "
          f"size {plan.size} ({plan.reason})")
    for mode in ("off", "on", "auto"):
        out = tmp / f"b{mode}.jsonl"
        c = child(run_cmd(dyn, [str(short)] * 4, out, ["--batching", mode]))
        total = sum(len(v) for v in results(out).values())
        print(f"   4 files unpaced, --batching {mode:<4}: {steady_fps(out):6.1f} fps, CPU "
              f"{c['cpu'] / total * 1000:.2f} ms/frame incl. start-up ({load_avg()})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edge-runtime" / "bench")
    ap.add_argument("--frames", type=int, default=300, help="frames of the single-source comparison")
    ap.add_argument("--multi-frames", type=int, default=120, help="frames per source in figures 2 to 4")
    a = ap.parse_args()
    raw = a.cache / "packages" / "mobilenet_v2_int8_onnx"
    if not (raw / "manifest.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite_models.py"), str(a.cache)], check=True)
    pkg = classifier_package(raw)
    onnx = next(pkg.glob("*.onnx"))
    CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(a.cache / "pycache")
    print(f"machine: {os.cpu_count()} cores, {load_avg()} (figures taken under the load other work puts on it)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        clip = write_clip(tmp / "clip.avi", a.frames)
        short = write_clip(tmp / "short.avi", a.multi_frames)
        child(run_cmd(pkg, [str(short)], tmp / "warm.jsonl", ["--max-frames", "1"]))  # compiled modules, disk cache
        rate = model_rate(pkg)
        print(f"model's own rate (predict_prepared back to back, 1 thread): {rate:.1f} fps ({load_avg()})")
        single_source(pkg, onnx, clip, tmp, a.frames)
        stage_figures(pkg, onnx, clip, a.frames)
        unpaced(pkg, short, tmp, rate)
        print("3. paced sources, one process vs as many processes side by side:")
        for live in (False, True):
            for k in (1, 2, 4):
                paced(pkg, tmp, short, k, live, a.multi_frames / 30.0)
        batching(pkg, short, tmp)
    print(f"own process: peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
