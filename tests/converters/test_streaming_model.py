"""A streaming audio model from the CLI: two inputs (audio [1, 576], recurrent state [2, ?, 128]), a constant
sample-rate input and an `If` on it; converted with --input-shape NAME=, --state, --const, and run on a CSV of one
audio sample per line with its state fed back (`edge-runtime run`, a real process)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_runtime.cli import main
from edge_runtime.package.manifest import Manifest

WINDOW, HIDDEN = 576, 128


def build_streaming_model(path):
    """score = sigmoid(W_out . h2); h1 = tanh(W_in . feats + W_h . state[0]); h2 = tanh(W_2 . h1 + W_h2 . state[1]);
    feats = audio when sample_rate == 16000, else the audio repeated (an 8 kHz path whose shape [1, 1152] cannot
    fit the weights: the branch must be resolved, not run)."""
    rng = np.random.default_rng(7)
    w = {
        "w_in": rng.normal(0, 1 / np.sqrt(WINDOW), (WINDOW, HIDDEN)),
        "w_h": rng.normal(0, 0.5 / np.sqrt(HIDDEN), (HIDDEN, HIDDEN)),
        "w_2": rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, HIDDEN)),
        "w_h2": rng.normal(0, 0.5 / np.sqrt(HIDDEN), (HIDDEN, HIDDEN)),
        "w_out": rng.normal(0, 2 / np.sqrt(HIDDEN), (HIDDEN, 1)),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    ints = {"rate16k": 16000, "i0": 0, "i1": 1, "ax0": 0}
    inits += [numpy_helper.from_array(np.array([v], np.int64), k) for k, v in ints.items()]
    vi = helper.make_tensor_value_info
    then_g = helper.make_graph([helper.make_node("Identity", ["audio"], ["t_feats"])], "at16k", [],
                               [vi("t_feats", TensorProto.FLOAT, [1, WINDOW])])  # fmt: skip
    else_g = helper.make_graph([helper.make_node("Concat", ["audio", "audio"], ["e_feats"], axis=1)], "at8k", [],
                               [vi("e_feats", TensorProto.FLOAT, [1, 2 * WINDOW])])  # fmt: skip
    n = helper.make_node
    nodes = [
        n("Equal", ["sample_rate", "rate16k"], ["is16k1"]),
        n("Squeeze", ["is16k1"], ["is16k"]),
        n("If", ["is16k"], ["feats"], then_branch=then_g, else_branch=else_g, name="rate_branch"),
        n("Gather", ["state", "i0"], ["s0g"], axis=0), n("Squeeze", ["s0g", "ax0"], ["s0"]),
        n("Gather", ["state", "i1"], ["s1g"], axis=0), n("Squeeze", ["s1g", "ax0"], ["s1"]),
        n("MatMul", ["feats", "w_in"], ["a"]), n("MatMul", ["s0", "w_h"], ["b"]), n("Add", ["a", "b"], ["ab"]),
        n("Tanh", ["ab"], ["h1"]),
        n("MatMul", ["h1", "w_2"], ["c"]), n("MatMul", ["s1", "w_h2"], ["d"]), n("Add", ["c", "d"], ["cd"]),
        n("Tanh", ["cd"], ["h2"]),
        n("Unsqueeze", ["h1", "ax0"], ["h1u"]), n("Unsqueeze", ["h2", "ax0"], ["h2u"]),
        n("Concat", ["h1u", "h2u"], ["state_out"], axis=0),
        n("MatMul", ["h2", "w_out"], ["logit"]), n("Sigmoid", ["logit"], ["score"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "streaming_kws",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, WINDOW]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", HIDDEN]),
         helper.make_tensor_value_info("sample_rate", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "batch", HIDDEN])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _audio(n_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 16000
    tone = 0.4 * np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * 0.5 * t)) * t)
    return (tone + rng.normal(0, 0.1, n_samples)).astype(np.float32)


def _float_stream(model_path, windows: list[np.ndarray]) -> list[float]:
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    state, scores = np.zeros((2, 1, HIDDEN), np.float32), []
    for w in windows:
        score, state = sess.run(None, {"audio": w[None], "state": state, "sample_rate": np.array([16000], np.int64)})
        scores.append(float(score.ravel()[0]))
    return scores


@pytest.fixture(scope="module")
def streaming(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    model = build_streaming_model(root / "kws.onnx")
    calib = _audio(WINDOW * 120, 1).reshape(120, WINDOW)
    np.save(root / "calib.npy", calib)
    return root, model


def test_dynamic_state_shape_is_refused_with_the_flag_that_fixes_it(streaming, tmp_path, capsys):
    root, model = streaming
    rc = main(["convert", str(model), "--profile", "x86-laptop", "--calibration", str(root / "calib.npy"),
               "--out", str(tmp_path / "p"), "--const", "sample_rate=16000", "--state", "state:state_out",
               "-q"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "input 'state' has a dynamic dimension 1" in err[0] and "--input-shape state=2,N,128" in err[0]


@pytest.mark.slow
def test_streaming_model_converts_and_runs_on_a_one_value_per_line_csv(streaming, tmp_path, capsys):
    """Given the streaming model, when converted for raspberry-pi-4 (TFLite preferred: falls back to ONNX) with
    every input named on the CLI, then the manifest binds the state, the If is resolved, and `edge-runtime run`
    on a CSV of single samples gives one score per hop, matching the float model's stream."""
    root, model = streaming
    out = tmp_path / "pkg"
    rc = main(["convert", str(model), "--profile", "raspberry-pi-4", "--calibration", str(root / "calib.npy"),
               "--out", str(out), "--input-shape", "state=2,1,128", "--state", "state:state_out",
               "--const", "sample_rate=16000", "--window-hop", "288", "--task", "raw"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "prefers tflite, but a onnx source cannot be converted to TFLite here: making onnx" in err
    m = Manifest.model_validate_json((out / "manifest.json").read_text())
    assert [s.model_dump() for s in m.state] == [{"input": "state", "output": "state_out"}]
    assert [i.name for i in m.inputs] == ["audio", "state"] and m.inputs[0].window_hop == 288
    graph = onnx.load(str(out / m.model_file)).graph
    assert not any(nd.op_type == "If" for nd in graph.node) and "sample_rate" not in [i.name for i in graph.input]
    assert any(nd.op_type == "QuantizeLinear" for nd in graph.node) or m.inputs[0].dtype in ("int8", "uint8")

    samples = _audio(WINDOW * 4, 9)
    csv = tmp_path / "audio.csv"
    csv.write_text("sample\n" + "\n".join(f"{v:.6f}" for v in samples) + "\n")
    run = [sys.executable, "-m", "edge_runtime.cli", "run", "--package", str(out), "--allow-unsigned", "--source"]
    proc = subprocess.run([*run, str(csv)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    hops = (len(samples) - WINDOW) // 288 + 1
    assert len(lines) == hops == 7
    got = [float(np.ravel(ln["raw"]["score"])[0]) for ln in lines]
    want = _float_stream(model, [samples[k * 288 : k * 288 + WINDOW] for k in range(hops)])
    assert np.max(np.abs(np.array(got) - np.array(want))) < 0.05, (got, want)
    assert len(set(np.round(want, 3))) > 1  # the state changes the scores: a stateless run would not match

    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3,4\n5,6\n")
    proc = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nothing processed: 3 bad line(s)" in proc.stderr
