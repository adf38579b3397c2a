"""Batching across sources, on a tiny ONNX classifier with a dynamic batch dimension built here: one backend call
for the frames ready from different sources, with the same answers as one by one, in order per source, and only
when timing batch 1 against batch N says it pays (auto)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.api import load
from edge_runtime.batching import plan_batches
from edge_runtime.pipeline import Pipeline, PipelineConfig, SourceLane
from edge_runtime.sources import IterableSource
from tests.model_factory import classifier_package, factory_trust, sample_frames


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    dynamic = load(classifier_package(root / "dyn", dynamic_batch=True, labels=tuple("abcde")).root,
                   trust=factory_trust())
    fixed = load(classifier_package(root / "fixed", labels=tuple("abcde")).root, trust=factory_trust())
    yield dynamic, fixed
    dynamic.close()
    fixed.close()


def test_a_batch_gives_the_answers_of_one_by_one(models) -> None:
    dynamic, fixed = models
    assert dynamic.batchable() and not fixed.batchable()
    frames = sample_frames(5, seed=3)
    batched = dynamic.predict_batch([dynamic.prepare(f) for f in frames])
    for frame, got in zip(frames, batched, strict=True):
        alone = dynamic.predict(frame)
        assert [c.index for c in got.classes] == [c.index for c in alone.classes]
        np.testing.assert_allclose([c.score for c in got.classes], [c.score for c in alone.classes], atol=1e-5)


def test_three_sources_are_batched_in_order_per_source_and_every_frame_once(models) -> None:
    """Given three sources of numbered frames and batching on, when the pipeline runs, then backend calls took
    several frames, every frame of each source came out once and in order, with the answer it has alone."""
    dynamic, _ = models
    frames = {name: sample_frames(12, seed=seed) for seed, name in enumerate(("a", "b", "c"))}
    lanes = [SourceLane(name, IterableSource(fs, name=name)) for name, fs in frames.items()]
    results: list = []
    stats = Pipeline(dynamic, lanes, [results.append], PipelineConfig(batching="on")).run()
    assert stats.batch["size"] == 3 and stats.batch["batches"] > 0, stats.batch
    by: dict[str, list] = {}
    for r in results:
        by.setdefault(r.source, []).append(r)
    assert {k: [r.index for r in v] for k, v in by.items()} == {k: list(range(12)) for k in frames}
    for name, rs in by.items():
        for r in rs[:4]:
            assert r.prediction.top.index == dynamic.predict(frames[name][r.index]).top.index


def test_the_plan_batches_only_what_can_be_batched_and_measures_the_rest(models) -> None:
    dynamic, fixed = models
    assert plan_batches(fixed, 3).size == 1 and "no dynamic batch" in plan_batches(fixed, 3).reason
    assert plan_batches(dynamic, 1).size == 1 and plan_batches(dynamic, 3, "off").size == 1
    plan = plan_batches(dynamic, 3, "auto")
    assert plan.single_ms is not None and plan.per_sample_ms is not None and plan.single_ms > 0
    assert plan.size == (3 if plan.per_sample_ms <= 0.9 * plan.single_ms else 1), plan


def test_run_batches_two_files_on_a_dynamic_batch_model(tmp_path) -> None:
    """Given `run --batching on` with two clips on the dynamic-batch classifier, then every frame of each comes out
    once in order and the summary counts the batched backend calls."""
    import json
    import subprocess
    import sys

    from tests.model_factory import trust_args
    from tests.sources.media import write_numbered_video

    pkg = classifier_package(tmp_path / "dyn", dynamic_batch=True)
    clips = [write_numbered_video(tmp_path / f"{n}.avi", count=10) for n in ("a", "b")]
    proc = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "run", "--package", str(pkg.root),
                           *trust_args(), "--batching", "on", "--source", f"a={clips[0]}", "--source",
                           f"b={clips[1]}"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    by: dict[str, list[int]] = {}
    for line in proc.stdout.splitlines():
        r = json.loads(line)
        by.setdefault(r["source"], []).append(r["index"])
    assert by == {"a": list(range(10)), "b": list(range(10))}
    import re

    calls = re.search(r"batching: (\d+) backend calls of up to 2 frames", proc.stderr)
    assert calls and int(calls.group(1)) > 0, proc.stderr
