"""The accuracy guard on the TFLite target: calibration methods it cannot do are skipped (and said so), and the
most error-sensitive ops are kept in float (TF's quantizer denylist) until the budget is met.

The model: a Keras MLP on 8x8 digits whose hidden layer has weights of 1000 on the top-left pixel, which is
blank in every digit. In float those weights never matter; in int8 they set every channel's weight scale
(1000/127), rounding all the real weights to zero, so the int8 model is useless until that op stays float.
"""

from __future__ import annotations

import numpy as np
import pytest

from converters.pipeline import ConvertOptions, convert
from converters.targets.tflite_int8 import float_ops
from edge_runtime.errors import AccuracyBudgetError, ConversionError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outlier_mlp(tmp_path_factory, digits):
    import tensorflow as tf

    keras = tf.keras
    keras.utils.set_random_seed(0)
    assert not digits.x[:, 0].any()  # the premise: pixel 0 is blank in every digit
    inp = keras.Input((8, 8, 1), batch_size=1, name="pixels")
    h = keras.layers.Dense(32, activation="relu", name="hidden")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="probs")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits.x[:1200].reshape(-1, 8, 8, 1), digits.y[:1200], epochs=10, batch_size=32, verbose=0)
    w, b = model.get_layer("hidden").get_weights()
    w[0, :] = 1000.0
    model.get_layer("hidden").set_weights([w, b])
    root = tmp_path_factory.mktemp("outlier_mlp")
    model.save(root / "mlp.keras")
    frames = (digits.x.reshape(-1, 8, 8) * 255).round().astype(np.uint8)
    np.save(root / "calib.npy", frames[1200:1300])
    np.save(root / "valid.npy", frames[1400:1500])
    return root


def _opts(root, out, **kw):
    return ConvertOptions(
        source=root / "mlp.keras", format="tflite", calibration=root / "calib.npy", validation=root / "valid.npy",
        out=out, input_kind="image", color_order="GRAY", **kw,
    )  # fmt: skip


def test_tflite_budget_miss_keeps_the_sensitive_op_in_float(outlier_mlp, tmp_path):
    """Given a profile whose first method is entropy (jetson-nano), when converting to TFLite, then minmax is
    used, entropy and percentile are recorded as skipped, and keeping the hidden layer in float meets the budget."""
    lines: list[str] = []
    pkg = convert(_opts(outlier_mlp, tmp_path / "pkg", profile="jetson-nano"), progress=lines.append)
    q, acc = pkg.manifest.quantization, pkg.manifest.accuracy
    assert q.calibration_method == "minmax" and q.method == "tflite-mlir-int8-mixed"
    assert q.remedies[0].startswith("calibration method minmax missed the budget (top-1 agreement")
    assert q.remedies[1:3] == tuple(
        f"calibration method {m} skipped: the TFLite target calibrates with minmax only"
        for m in ("entropy", "percentile")
    )
    assert q.remedies[-1].startswith("kept 1 error-sensitive node(s) in float: ") and "hidden" in q.remedies[-1]
    assert acc.passed and acc.top1_agreement >= 0.98  # jetson-nano budget
    assert any(line.startswith("per-op error analysis") for line in lines)
    # float_nodes says what the file holds: exactly the hidden FULLY_CONNECTED computes in float
    left = float_ops(pkg.model_path.read_bytes())
    assert q.float_nodes == left and len(left) == 1 and left[0].startswith("FULLY_CONNECTED:") and "hidden" in left[0]


def test_tflite_budget_miss_without_float_ops_fails_and_says_what_was_tried(outlier_mlp, tmp_path):
    out = tmp_path / "pkg"
    with pytest.raises(AccuracyBudgetError) as err:
        convert(_opts(outlier_mlp, out, profile="x86-laptop", max_float_nodes=0), progress=lambda s: None)
    msg = str(err.value)
    assert "after trying minmax calibration (entropy, percentile: not supported by the TFLite target)" in msg
    assert "keeping up to" not in msg and not out.exists()  # no float-node remedy was tried
    assert "--max-float-nodes above 0" in msg and "--format onnx for entropy and percentile" in msg  # the fixes


def test_tflite_refuses_an_explicit_method_it_cannot_do_before_any_work(outlier_mlp, tmp_path):
    lines: list[str] = []
    with pytest.raises(ConversionError, match="calibrates with minmax only; --calibration-method entropy needs"):
        convert(_opts(outlier_mlp, tmp_path / "pkg", profile="x86-laptop", calibration_method="entropy"), lines.append)
    assert lines == []  # refused at planning: nothing loaded
