"""`edge-runtime convert --task detection --decoding FILE [--anchors FILE.npy]`: detection packages from the CLI.

The YOLO-style model is a real (tiny) detector built here: an 8x8-stride Conv scores each 8x8 cell for "red"
and "blue" (mean channel brightness), and a grid constant adds each cell's box (cx, cy, w, h in input pixels),
in the v8 layout [1, 4+C, N]. Test frames have known coloured squares, so the expected detections are known
without running any model. Tolerance: box IoU with the drawn square >= 0.9, score >= 0.9 (a full cell is 1.0).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_runtime.api import load
from edge_runtime.cli import main
from edge_runtime.package import load_package

SIZE, CELL = 64, 8  # model input 64x64, one box per 8x8 cell
LABELS = ("red", "blue")


def _yolo_model(path):
    cells = SIZE // CELL
    w = np.zeros((6, 3, CELL, CELL), np.float32)
    w[4, 0] = w[5, 2] = 1.0 / (CELL * CELL)  # RGB input: class 0 = red cell, class 1 = blue cell
    ys, xs = np.mgrid[0:cells, 0:cells]
    grid = np.zeros((1, 6, cells * cells), np.float32)
    grid[0, 0], grid[0, 1] = (xs.ravel() + 0.5) * CELL, (ys.ravel() + 0.5) * CELL
    grid[0, 2:4] = CELL
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["c"], name="score_conv", kernel_shape=[CELL, CELL],
                         strides=[CELL, CELL]),
        helper.make_node("Reshape", ["c", "shape"], ["flat"], name="flatten_cells"),
        helper.make_node("Add", ["flat", "grid"], ["output0"], name="add_grid"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "yolo_cells", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, cells * cells])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, 6, -1], np.int64), "shape"),
         numpy_helper.from_array(grid, "grid")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _frame(squares, scale=2):
    """A BGR frame (SIZE*scale square) with full cells painted: squares = [(cell_x, cell_y, class)]."""
    img = np.zeros((SIZE * scale, SIZE * scale, 3), np.uint8)
    for cx, cy, cls in squares:
        x0, y0, s = cx * CELL * scale, cy * CELL * scale, CELL * scale
        img[y0 : y0 + s, x0 : x0 + s] = (0, 0, 255) if cls == 0 else (255, 0, 0)
    return img


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy)


@pytest.fixture(scope="module")
def yolo_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo")
    (root / "cal").mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        picks = [(int(rng.integers(8)), int(rng.integers(8)), int(rng.integers(2))) for _ in range(3)]
        cv2.imwrite(str(root / "cal" / f"{i:02d}.png"), _frame(picks))
    (root / "decoding.yaml").write_text("type: yolo\nvariant: v8\noutput: output0\nscore_threshold: 0.5\n")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return root, _yolo_model(root / "yolo.onnx")


def test_yolo_model_converts_from_the_cli_and_the_runtime_decodes_its_detections(yolo_setup):
    root, model = yolo_setup
    out = root / "pkg"
    rc = main(["convert", str(model), "--profile", "x86-laptop", "--calibration", str(root / "cal"), "--out", str(out),
               "--task", "detection", "--decoding", str(root / "decoding.yaml"), "--labels", str(root / "labels.txt"),
               "--resize", "letterbox", "-q"])  # fmt: skip
    assert rc == 0
    m = load_package(out, allow_unsigned=True).manifest
    assert m.outputs.task == "detection" and m.outputs.labels == LABELS and m.quantization.precision == "int8"
    dec = m.outputs.decoding
    assert (dec.type, dec.variant, dec.output, dec.score_threshold) == ("yolo", "v8", "output0", 0.5)
    assert m.inputs[0].dtype == "uint8"  # the Conv reads the input through QDQ: integer input
    assert "Conv" in {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    # and its recipe holds the decoding read from the file (and the file's digest): it re-runs to the same model
    from converters.recipe import convert_with_recipe, recipe_of

    assert m.provenance.options["decoding"] == dec.model_dump(mode="json")
    assert m.provenance.inputs["decoding"].path == str(root / "decoding.yaml")
    again = convert_with_recipe(recipe_of(out), source=model, output=root / "again", progress=lambda s: None)
    assert (again / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    with load(out, allow_unsigned=True) as detector:
        found = detector.predict(_frame([(2, 3, 0), (5, 6, 1)])).detections  # 128x128 frame: boxes x2
        assert detector.predict(_frame([])).detections == ()
    assert sorted(d.label for d in found) == ["blue", "red"]
    for d in found:
        cx, cy = (2, 3) if d.label == "red" else (5, 6)
        truth = (cx * 16, cy * 16, cx * 16 + 16, cy * 16 + 16)
        # int8 (7-bit weights on x86) moves a 16 px box by under a pixel: IoU 0.89 for a 0.47 px shift of each edge
        assert max(abs(a - b) for a, b in zip(d.box, truth, strict=True)) <= 1.0, (d, truth)
        assert _iou(d.box, truth) >= 0.85, (d, truth)
        assert d.score >= 0.9


def _convert_fails(capsys, tmp_path, source, *extra) -> str:
    out = tmp_path / "out"
    rc = main(["convert", str(source), "--profile", "x86-laptop", "--calibration", str(tmp_path), "--out", str(out),
               *extra])  # fmt: skip
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("edge-runtime: error:")]
    assert rc != 0 and len(errors) == 1 and "Traceback" not in err, err
    assert not out.exists()
    return errors[0]


def test_bad_decoding_and_anchors_are_one_line_each(capsys, tmp_path, yolo_setup):
    _, model = yolo_setup
    files = {
        "bad.yaml": "type: yolo\nvariant: [unclosed\n",
        "notype.yaml": "variant: v8\noutput: output0\n",
        "extra.json": json.dumps({"type": "yolo", "variant": "v8", "output": "output0", "colour": "red"}),
        "ssd.yaml": "type: ssd\nboxes_output: output0\nscores_output: output0\nscale: [64, 64, 64, 64]\n",
        "yolo.yaml": "type: yolo\nvariant: v8\noutput: output0\n",
        "wrong_name.yaml": "type: yolo\nvariant: v8\noutput: boxes\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    np.save(tmp_path / "anchors.npy", np.zeros((10, 3), np.float32))
    det = ["--task", "detection"]
    assert "give --decoding FILE" in _convert_fails(capsys, tmp_path, model, *det)
    assert "not valid yaml" in _convert_fails(capsys, tmp_path, model, *det, "--decoding", str(tmp_path / "bad.yaml"))
    line = _convert_fails(capsys, tmp_path, model, *det, "--decoding", str(tmp_path / "notype.yaml"))
    assert "'type' must be ssd or yolo" in line
    line = _convert_fails(capsys, tmp_path, model, *det, "--decoding", str(tmp_path / "extra.json"))
    assert "colour" in line and "extra" in line.lower()
    line = _convert_fails(capsys, tmp_path, model, *det, "--decoding", str(tmp_path / "ssd.yaml"))
    assert "needs its anchors: give --anchors" in line
    line = _convert_fails(capsys, tmp_path, model, *det, "--decoding", str(tmp_path / "ssd.yaml"), "--anchors",
                          str(tmp_path / "anchors.npy"))  # fmt: skip
    assert "expected an [N, 4] array" in line
    line = _convert_fails(capsys, tmp_path, model, "--decoding", str(tmp_path / "yolo.yaml"), "--anchors",
                          str(tmp_path / "anchors.npy"))  # fmt: skip
    assert "--anchors applies to SSD decodings only" in line
    assert "--anchors needs --decoding" in _convert_fails(capsys, tmp_path, model, "--anchors", str(tmp_path / "x"))
    line = _convert_fails(capsys, tmp_path, model, "--decoding", str(tmp_path / "missing.yaml"))
    assert "no such file" in line
    line = _convert_fails(capsys, tmp_path, model, "--decoding", str(tmp_path / "yolo.yaml"), "--task", "raw")
    assert "task raw cannot use a yolo decoding" in line
    line = _convert_fails(capsys, tmp_path, model, "--decoding", str(tmp_path / "wrong_name.yaml"))
    assert "'boxes' is not an output of the model" in line and "output0" in line
