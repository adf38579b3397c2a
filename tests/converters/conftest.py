"""Real, tiny models and data for converter tests, built once per session (no downloads).

Data: scikit-learn's 8x8 digits (ships with the package). Models: an MLP and a random forest trained here, and
an ONNX CNN built with onnx.helper whose classifier weights are fitted with numpy (ridge regression on random
convolution features), so every number the tests check comes from a real model.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import joblib
import numpy as np
import pytest

DIGIT_HW = 16  # digits upscaled to 16x16 grey frames for the image models


@dataclass(frozen=True)
class Digits:
    x: np.ndarray  # float32 features in [0, 1], (N, 64)
    y: np.ndarray
    frames: np.ndarray  # uint8 (N, 16, 16) grey frames


@pytest.fixture(scope="session")
def digits() -> Digits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    frames = np.stack(
        [cv2.resize((img * 16).clip(0, 255).astype(np.uint8), (DIGIT_HW, DIGIT_HW), interpolation=cv2.INTER_LINEAR)
         for img in d.images]
    )  # fmt: skip
    return Digits(x, d.target, frames)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> Path:
    """features_calib.npy / features_valid.npy, frames as PNG folders (calib/valid), and a digits video."""
    root = tmp_path_factory.mktemp("data")
    np.save(root / "features_calib.npy", digits.x[1200:1360])
    np.save(root / "features_valid.npy", digits.x[1400:1500])
    for name, sl in (("calib", slice(1200, 1280)), ("valid", slice(1400, 1460))):
        folder = root / name
        folder.mkdir()
        for i, frame in enumerate(digits.frames[sl]):
            cv2.imwrite(str(folder / f"{i:04d}.png"), frame)
    np.save(root / "frames_calib.npy", digits.frames[1200:1280])
    writer = cv2.VideoWriter(str(root / "digits.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for frame in digits.frames[1300:1360]:
        writer.write(cv2.cvtColor(cv2.resize(frame, (64, 64)), cv2.COLOR_GRAY2BGR))
    writer.release()
    return root


@pytest.fixture(scope="session")
def sklearn_models(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> dict[str, Path]:
    """An MLP saved with pickle and with joblib, and a random forest (pickle)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neural_network import MLPClassifier

    root = tmp_path_factory.mktemp("sklearn")
    mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=400, random_state=0).fit(digits.x[:1200], digits.y[:1200])
    forest = RandomForestClassifier(n_estimators=5, max_depth=6, random_state=0).fit(digits.x[:1200], digits.y[:1200])
    paths = {"mlp.pkl": root / "mlp.pkl", "mlp.joblib": root / "mlp.joblib", "forest.pkl": root / "forest.pkl"}
    paths["mlp.pkl"].write_bytes(pickle.dumps(mlp))
    joblib.dump(mlp, paths["mlp.joblib"])
    paths["forest.pkl"].write_bytes(pickle.dumps(forest))
    return paths


def _conv_features(frames: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Numpy twin of the ONNX graph's Conv(3x3, pad 1) -> Relu -> MaxPool(2) -> Flatten, NCHW order."""
    x = frames.astype(np.float32)[:, None] / 255.0
    n, _, h, wd = x.shape
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([pad[:, 0, i : i + h, j : j + wd] for i in range(3) for j in range(3)], axis=-1)
    out = np.maximum(np.einsum("nhwk,ck->nchw", cols, w.reshape(w.shape[0], 9)) + b[None, :, None, None], 0)
    pooled = out.reshape(n, w.shape[0], h // 2, 2, wd // 2, 2).max(axis=(3, 5))
    return pooled.reshape(n, -1)


def build_onnx_cnn(path: Path, digits: Digits, channels: int = 8, seed: int = 0) -> Path:
    """Grey 16x16 NCHW digit classifier: random conv filters, ridge-fitted Gemm, Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.6, (channels, 1, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, channels).astype(np.float32)
    feats = _conv_features(digits.frames[:1200], w, b)
    targets = np.eye(10, dtype=np.float32)[digits.y[:1200]] * 8.0 - 4.0
    a = np.hstack([feats, np.ones((len(feats), 1), np.float32)])
    sol = np.linalg.solve(a.T @ a + 1.0 * np.eye(a.shape[1]), a.T @ targets).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "conv_w"),
        numpy_helper.from_array(b, "conv_b"),
        numpy_helper.from_array(sol[:-1], "fc_w"),
        numpy_helper.from_array(sol[-1], "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("MaxPool", ["relu"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["scores"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, DIGIT_HW, DIGIT_HW])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def onnx_cnn(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> Path:
    return build_onnx_cnn(tmp_path_factory.mktemp("cnn") / "digits_cnn.onnx", digits)


@pytest.fixture(scope="session")
def session_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from edge_runtime.package import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys") / "conv")
