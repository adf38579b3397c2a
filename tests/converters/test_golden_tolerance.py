"""Golden tolerance per output: the packager gives each output its own atol, the device's smoke test uses it.

The model has two outputs on very different scales, like BlazeFace: ``boxes`` (a linear map, values in the
hundreds) and ``scores`` (a sigmoid, in [0, 1]). One shared atol sized for the boxes would let any score error
through; per-output tolerances catch it.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.pipeline import ConvertOptions, convert
from edge_runtime.api import load
from edge_runtime.errors import PackageError
from edge_runtime.golden import smoke_test
from edge_runtime.package.store import Package, load_package, write_package


@pytest.fixture(scope="module")
def two_scale_package(tmp_path_factory) -> Package:
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("two_scale")
    inits = [
        numpy_helper.from_array(rng.normal(0, 40, (16, 8)).astype(np.float32), "w_box"),
        numpy_helper.from_array(rng.normal(0, 0.5, (16, 4)).astype(np.float32), "w_score"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w_box"], ["boxes"], name="box_head"),
        helper.make_node("MatMul", ["x", "w_score"], ["logits"], name="score_head"),
        helper.make_node("Sigmoid", ["logits"], ["scores"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes, "two_scale", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(root / "two_scale.onnx"))
    np.save(root / "calib.npy", rng.uniform(0, 1, (60, 16)).astype(np.float32))
    np.save(root / "valid.npy", rng.uniform(0, 1, (20, 16)).astype(np.float32))
    opts = ConvertOptions(
        source=root / "two_scale.onnx", profile="x86-laptop", calibration=root / "calib.npy",
        validation=root / "valid.npy", out=root / "pkg", task="raw",
    )  # fmt: skip
    return convert(opts, progress=lambda s: None)


def _output_steps(model_path) -> dict[str, float]:
    """Each graph output's quantization step, read from the QuantizeLinear producing its integer tensor.

    x86-laptop asks for integer outputs, so each output is a QuantizeLinear's result (no DequantizeLinear).
    """
    model = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    steps = {}
    for out in model.graph.output:
        node = producer[out.name]
        assert node.op_type == "QuantizeLinear", (out.name, node.op_type)
        assert out.type.tensor_type.elem_type == TensorProto.UINT8
        steps[out.name] = float(inits[node.input[1]])
    return steps


def test_packager_gives_each_output_its_own_tolerance(two_scale_package):
    m = two_scale_package.manifest
    steps = _output_steps(two_scale_package.model_path)
    names = [t.name for t in m.outputs.tensors]
    assert names == ["boxes", "scores"]
    # stated: 1.5 quantization steps of each output, in model order; the shared atol is the loosest
    assert m.golden.atol_per_output == pytest.approx([1.5 * steps[n] for n in names])
    assert m.golden.atol == max(m.golden.atol_per_output)
    assert m.golden.atol_per_output[0] > 50 * m.golden.atol_per_output[1]  # boxes' step dwarfs the scores'


def _rewrite(pkg: Package, out, golden_update: dict, bump_scores: float = 0.0) -> Package:
    """A copy of ``pkg`` with golden fields changed and (optionally) the golden score outputs moved."""
    files: dict[str, bytes | object] = {f.path: (pkg.root / f.path).read_bytes() for f in pkg.manifest.files}
    with np.load(pkg.root / pkg.manifest.golden.file) as g:
        arrays = {k: g[k] for k in g.files}
    q = pkg.manifest.outputs.tensors[1].quantization
    for k in [k for k in arrays if k.startswith("output_") and k.endswith("_1")]:  # output 1 = scores
        a = arrays[k]
        if q is None:
            arrays[k] = (a + bump_scores).astype(a.dtype)
            continue
        steps = int(round(bump_scores / q.scale[0]))  # integer output: move it by whole quantization steps
        up = a.astype(np.int64) + steps <= np.iinfo(a.dtype).max
        arrays[k] = np.where(up, a.astype(np.int64) + steps, a.astype(np.int64) - steps).astype(a.dtype)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    files[pkg.manifest.golden.file] = buf.getvalue()
    fields = pkg.manifest.model_dump(exclude={"files"})
    fields["golden"] = {**fields["golden"], **golden_update}
    return write_package(out, files, fields)  # type: ignore[arg-type]


def test_smoke_test_checks_each_output_against_its_own_tolerance(two_scale_package, tmp_path):
    """Given golden scores moved by 3 score steps (well inside the boxes' tolerance), then the per-output check
    fails on the scores alone; without atol_per_output the single atol keeps its old meaning and passes."""
    atols = two_scale_package.manifest.golden.atol_per_output
    bump = 2 * atols[1]
    assert bump < atols[0]
    with load(two_scale_package, allow_unsigned=True) as model:
        assert smoke_test(model).passed  # the package as written
    moved = _rewrite(two_scale_package, tmp_path / "moved", {}, bump_scores=bump)
    with load(moved, allow_unsigned=True) as model:
        report = smoke_test(model)
    assert not report.passed and report.reasons
    assert all("output scores" in r and f"atol {atols[1]:.4g}" in r for r in report.reasons)
    legacy = _rewrite(two_scale_package, tmp_path / "legacy", {"atol_per_output": None}, bump_scores=bump)
    assert legacy.manifest.golden.atol_per_output is None
    with load(legacy, allow_unsigned=True) as model:
        assert smoke_test(model).passed


def test_manifest_refuses_a_tolerance_list_that_does_not_match_the_outputs(two_scale_package, tmp_path):
    with pytest.raises(PackageError, match="atol_per_output has 1 values for 2 outputs"):
        _rewrite(two_scale_package, tmp_path / "bad", {"atol_per_output": (0.1,)})
    with pytest.raises(PackageError):
        _rewrite(two_scale_package, tmp_path / "neg", {"atol_per_output": (0.1, -1.0)})
    assert not (tmp_path / "bad").exists()
    assert load_package(two_scale_package.root, allow_unsigned=True).manifest.golden.atol_per_output
