"""The user's training command in the re-training tests: a small MLP on train.npz, written as ONNX.

    python train_digits.py DATA_DIR PARENT_MODEL OUTPUT [--mode-file FILE]

The mode file says ``good``, ``worse`` (shuffled labels: a candidate that must fail its gates) or ``slow`` (the
first attempt sleeps 60 s, so a test can kill the server while it trains; each attempt leaves a mark).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def onnx_model(layers: list[tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """image [1,8,8,1] float -> Reshape [1,64] -> (MatMul, Add, Relu)* -> Softmax -> probabilities [1,10]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Reshape", ["image", "shape"], ["h0"])]
    inits = [numpy_helper.from_array(np.array([1, 64], np.int64), "shape")]
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"B{i}")]
        nodes += [helper.make_node("MatMul", [f"h{i}", f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"])]
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("Softmax", [f"a{len(layers) - 1}"], ["probabilities"], axis=1))
    graph = helper.make_graph(nodes, "digits", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                [1, 8, 8, 1])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def train(x: np.ndarray, y: np.ndarray, worse: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    import warnings

    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    if worse:
        y = np.random.default_rng(0).permutation(y)
    x = x.reshape(len(x), -1)
    x = np.concatenate([x] * max(1, 600 // len(x)))  # small sets: a few more epochs' worth
    y = np.concatenate([y] * max(1, 600 // len(y)))
    # one BLAS thread: a pool per core on a loaded machine made this 3x slower here
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # ConvergenceWarning: the iteration bound is the point
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=0).fit(x, y)
    if len(clf.classes_) != 10:
        raise SystemExit(f"training data holds classes {clf.classes_.tolist()}, not all ten")
    return list(zip(clf.coefs_, clf.intercepts_, strict=True))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("data", type=Path)
    p.add_argument("model", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--mode-file", type=Path)
    a = p.parse_args()
    mode = a.mode_file.read_text().strip() if a.mode_file else "good"
    marker = a.data.parent / "attempts"
    marker.write_text((marker.read_text() if marker.exists() else "") + "x")
    attempt = len(marker.read_text())
    print(f"attempt {attempt}, mode {mode}", flush=True)
    if mode == "slow" and attempt == 1:
        time.sleep(60)
    with np.load(a.data / "train.npz") as z:
        x, y = z["x"], z["y"]
    base = json.loads((a.data / "snapshot.json").read_text())["base_rows"]
    if base and len(y) > base:  # the recent samples are few: repeat them so they weigh like the base data
        reps = max(1, base // (len(y) - base) // 2)
        x, y = np.concatenate([x] + [x[base:]] * reps), np.concatenate([y] + [y[base:]] * reps)
    assert a.model.is_file(), f"no parent model at {a.model}"
    onnx_model(train(x, y, mode == "worse"), a.output)
    print(f"trained on {len(y)} samples ({np.bincount(y, minlength=10).tolist()}), wrote {a.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
