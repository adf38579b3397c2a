"""Re-training loop figures: the scenario of tests/retrain/test_retrain_loop.py without the server kill, measured.

    PYTHONPATH=. python benchmarks/retrain_figures.py [--json OUT] [--keep DIR]

Two real agents serve a digits classifier (1.0.0, trained on upright digits) on a looping clip; the clip is replaced
by inverted digits; drift fires on both; the devices keep and upload samples on their own under the group's signed
collection policy (tests/retrain/scenario.py COLLECT: on drift, low confidence, a random slice, per-class quotas,
near-duplicate suppression, chunked resumable uploads); once 80 samples of each device kept since the first drift
have arrived, every uploaded sample is labelled from the data set (standing in for a person); the server's
triggers start a run; the training command (the test's train_digits.py), conversion with the parent's recipe,
gates, canary and promotion follow. Printed, measured in this run: accuracy on the shifted stream before and after
(the parent and the candidate on the clip's 300 inverted frames and on 300 inverted digits neither saw), samples
kept on the devices, uploaded (by the reason they were kept), labelled and used for training, bytes uploaded, the
time from the first drift event to the new model serving on every device and the share of it spent in the
training command. A figure past its goal reads MISS.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_runtime.api import load  # noqa: E402
from edge_runtime.benchmark.machine import machine_summary  # noqa: E402
from tests.retrain import digits as D  # noqa: E402
from tests.retrain.scenario import DEVICES, Scenario  # noqa: E402

GOALS = {"accuracy_after_min": 0.8, "drift_to_serving_s_max": 120.0}
POLICY = {
    "triggers": {"drift_devices": 2, "new_labels": 40, "min_new_labels": 40, "cooldown_s": 0},
    "canary": {"auto": True, "canaries": ["cam-1"], "window_s": 5, "timeout_s": 120,
               "thresholds": {"max_confidence_drop": 1.0, "max_latency_ratio": 20}}}


def accuracy(package: Path, frames: list[Any], labels: list[int]) -> float:
    with load(package, allow_unsigned=True) as m:
        return sum(int(m.predict(f).top.index == y) for f, y in zip(frames, labels, strict=True)) / len(labels)


def _kept(tmp: Path) -> int:
    return sum(len(list((tmp / d).rglob("samples/*.json"))) for d in DEVICES)


def scenario(tmp: Path) -> dict[str, Any]:
    s = Scenario(tmp, POLICY)
    (tmp / "mode.txt").write_text("good")
    try:
        s.start()
        first_drift = s.shift()
        s.collected(first_drift, per_device=80, timeout=120)
        labelled = s.label_uploaded()
        rid = s.first_run()
        run = s.wait_final(rid, 300)
        if run["state"] != "done":
            raise SystemExit(f"run {rid} ended {run['state']}: {run['reason']}")
        deadline = time.time() + 120
        while not s.serving(run["candidate"]) and time.time() < deadline:
            time.sleep(0.2)
        served = time.time()
        kept, uploaded = _kept(tmp), s.samples()
    finally:
        s.stop()
    steps = {st["event"]: st for st in run["steps"]}
    imgs, y = D.digits()
    clip_ids, unseen = list(range(600, 900)), list(range(1200, 1500))
    cand = tmp / "fleet" / "retrain" / "runs" / str(rid) / "candidate"
    acc = {}
    for name, ids in (("clip", clip_ids), ("unseen", unseen)):
        frames = [D.frame(imgs[i], inverted=True) for i in ids]
        acc[name] = {"before": accuracy(tmp / "pkg", frames, list(y[ids])), "after": accuracy(cand, frames,
                                                                                              list(y[ids]))}
    total = served - first_drift
    train_s = steps["trained"]["figures"]["seconds"]
    snap = steps["snapshot_done"]["figures"]
    return {
        "accuracy_shifted": acc, "samples_kept_on_devices": kept, "samples_uploaded": len(uploaded),
        "samples_labelled": len(labelled), "labelled_by_reason": {r: sum(i["reason"] == r for i in labelled)
                                                                  for r in sorted({i["reason"] for i in labelled})},
        "labelled_after_drift": sum((i["ts"] or 0) >= first_drift for i in labelled),
        "bytes_labelled": sum(i["bytes"] for i in labelled),
        "samples_trained_on": snap["new"], "samples_field_gate": snap["field"],
        "bytes_uploaded": sum(i["bytes"] for i in uploaded), "drift_to_serving_s": round(total, 2),
        "training_s": train_s, "training_share": round(train_s / total, 3),
        "steps_s": {e: round(st["ts"] - run["steps"][0]["ts"], 2) for e, st in steps.items()},
        "gates": run["gates"], "run": rid,
    }


def report(f: dict[str, Any]) -> None:
    def verdict(ok: bool) -> str:
        return "" if ok else "  MISS"

    a = f["accuracy_shifted"]
    print(f"machine: {machine_summary()}")
    for name, what in (("clip", "the shifted clip's 300 frames"), ("unseen", "300 inverted digits neither saw")):
        print(f"accuracy on {what}: before {a[name]['before']:.3f}, after {a[name]['after']:.3f}"
              f"{verdict(a[name]['after'] >= GOALS['accuracy_after_min'])}")
    print(f"samples: {f['samples_kept_on_devices']} kept on the devices, {f['samples_uploaded']} uploaded by the "
          f"end ({f['bytes_uploaded']} bytes), {f['samples_labelled']} labelled when the person looked "
          f"({f['bytes_labelled']} bytes; {f['labelled_after_drift']} kept after the first drift; by reason "
          f"{f['labelled_by_reason']}), {f['samples_trained_on']} trained on, "
          f"{f['samples_field_gate']} held out for the field gate")
    print(f"first drift event -> new model serving on every device: {f['drift_to_serving_s']:.1f} s"
          f"{verdict(f['drift_to_serving_s'] <= GOALS['drift_to_serving_s_max'])}; training command "
          f"{f['training_s']:.1f} s ({100 * f['training_share']:.0f}%)")
    print("run steps (s after the run was created): " + ", ".join(f"{k} {v}" for k, v in f["steps_s"].items()))
    print("  (the rest of drift -> serving: the devices' uploads, and labelling, done by the benchmark as a person "
          "would)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = p.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        figures = scenario(args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="retrain-figures-") as tmp:
            figures = scenario(Path(tmp))
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
