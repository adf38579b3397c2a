"""The one preprocessing implementation: the LUT fast path must equal the plain float formula."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.errors import InputError
from edge_runtime.package.manifest import InputSpec
from edge_runtime.preprocess import ImagePreprocessor, TensorPreprocessor
from edge_runtime.quant import dequantize, quantize


def spec(
    dtype="float32", layout="NHWC", order="RGB", resize="stretch", hw=(4, 6), c=3, q=None, mean=(127.5,), std=(127.5,)
):
    shape = (1, hw[0], hw[1], c) if layout == "NHWC" else (1, c, hw[0], hw[1])
    return InputSpec(
        name="x", shape=shape, dtype=dtype, kind="image", layout=layout, color_order=order, resize=resize,
        normalization={"mean": mean, "std": std}, quantization=q,
    )


def test_float_path_equals_formula_and_swaps_bgr_to_rgb():
    frame = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    x, t = ImagePreprocessor(spec(), frame_order="BGR")(frame)
    expected = (frame[:, :, ::-1].astype(np.float32) - 127.5) / 127.5
    assert x.shape == (1, 4, 6, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], expected, atol=1e-6)
    assert (t.scale_x, t.scale_y) == (1.0, 1.0)


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(0.001, 0.1),
    zp=st.integers(-128, 127),
    mean=st.floats(0, 255),
    std=st.floats(1, 128),
)
def test_int8_lut_equals_normalise_then_quantize(scale, zp, mean, std):
    q = {"scale": [scale], "zero_point": [zp]}
    s = spec(dtype="int8", q=q, mean=(mean,), std=(std,))
    frame = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2
    x, _ = ImagePreprocessor(s, frame_order="RGB")(frame)
    ref = quantize((frame.astype(np.float64) - mean) / std, s.quantization, np.int8)
    assert x.dtype == np.int8
    np.testing.assert_array_equal(x[0], ref)


def test_nchw_layout_and_per_channel_normalisation():
    s = spec(layout="NCHW", mean=(10.0, 20.0, 30.0), std=(1.0, 2.0, 3.0))
    frame = np.full((4, 6, 3), 60, np.uint8)
    x, _ = ImagePreprocessor(s, frame_order="RGB")(frame)
    assert x.shape == (1, 3, 4, 6)
    np.testing.assert_allclose(x[0, :, 0, 0], [50.0, 20.0, 10.0])


def test_letterbox_maps_boxes_back_to_frame_pixels():
    s = spec(resize="letterbox", hw=(100, 100))
    frame = np.zeros((50, 200, 3), np.uint8)
    x, t = ImagePreprocessor(s)(frame)
    assert x.shape == (1, 100, 100, 3)
    # the frame's right-bottom corner (200, 50) lands at model pixel (100, 62.5) and maps back
    back = t.to_frame(np.array([[100.0, 62.5]]))
    np.testing.assert_allclose(back, [[200.0, 50.0]], atol=1.0)
    # padding rows are the pad value, normalised
    np.testing.assert_allclose(x[0, 0, 0], (114 - 127.5) / 127.5, atol=1e-6)


def test_center_crop_transform_roundtrip():
    s = spec(resize="center_crop", hw=(10, 10))
    _, t = ImagePreprocessor(s)(np.zeros((20, 40, 3), np.uint8))
    np.testing.assert_allclose(t.to_frame(np.array([[0.0, 0.0, 10.0, 10.0]])), [[10.0, 0.0, 30.0, 20.0]])


def test_grey_model_from_colour_frame_and_colour_model_from_grey_frame():
    g = ImagePreprocessor(spec(order="GRAY", c=1))(np.full((4, 6, 3), 255, np.uint8))[0]
    assert g.shape == (1, 4, 6, 1) and np.allclose(g, 1.0)
    c = ImagePreprocessor(spec())(np.full((8, 12), 0, np.uint8))[0]
    assert c.shape == (1, 4, 6, 3) and np.allclose(c, -1.0)


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((4, 6, 3), np.float32),
        np.zeros((4, 6, 5), np.uint8),
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((0, 6), np.uint8),  # an empty grey frame: was a cv2.error from resize, not an InputError
        np.zeros((1, 6), np.uint8),
        np.zeros(6, np.uint8),
        "nope",
    ],
    ids=["float", "5ch", "1x1", "grey-empty", "grey-1-row", "1d", "str"],
)
def test_bad_frames_raise_input_error(frame):
    with pytest.raises(InputError):
        ImagePreprocessor(spec())(frame)


def test_unknown_frame_order_is_refused():
    """A typo ("BRG") used to be taken as BGR silently."""
    with pytest.raises(InputError, match="frame order"):
        ImagePreprocessor(spec(), "BRG")  # type: ignore[arg-type]


def test_tensor_preprocessor_refuses_nan_instead_of_quantizing_garbage():
    s = InputSpec(name="w", shape=(1, 4), dtype="int8", kind="tensor", normalization={"mean": (0.0,), "std": (1.0,)},
                  quantization={"scale": [0.1], "zero_point": [0]})
    assert TensorPreprocessor(s)(np.array([0.1, 0.2, 0.3, 0.4])).tolist() == [[1, 2, 3, 4]]
    assert TensorPreprocessor(s)(np.array([np.inf, -np.inf, 0, 0])).tolist() == [[127, -128, 0, 0]]  # saturates
    with pytest.raises(InputError, match="NaN"):
        TensorPreprocessor(s)(np.array([0.1, np.nan, 0.3, 0.4]))
    float_input = s.model_copy(update={"dtype": "float32", "quantization": None})  # NaN may mean "missing" there
    assert np.isnan(TensorPreprocessor(float_input)(np.array([0.1, np.nan, 0.3, 0.4]))).sum() == 1


def test_tensor_preprocessor_normalises_quantizes_and_checks_shape():
    s = InputSpec(
        name="w", shape=(1, 16, 3), dtype="int8", kind="tensor", normalization={"mean": (1.0,), "std": (2.0,)},
        quantization={"scale": [0.05], "zero_point": [3]},
    )
    window = np.linspace(-3, 5, 48, dtype=np.float32).reshape(16, 3)
    x = TensorPreprocessor(s)(window)
    assert x.shape == (1, 16, 3) and x.dtype == np.int8
    np.testing.assert_allclose(dequantize(x, s.quantization)[0], (window - 1) / 2, atol=0.05 / 2 + 1e-6)
    with pytest.raises(InputError, match="expects shape"):
        TensorPreprocessor(s)(np.zeros((15, 3)))
