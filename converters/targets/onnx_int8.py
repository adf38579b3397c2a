"""ONNX target: static int8 quantization with onnxruntime (QDQ format), or a float32/float16 copy.

``quantize_onnx`` writes a QDQ model with float32 inputs and outputs (QuantizeLinear/DequantizeLinear at the
edges); where the profile asks for int8/uint8 I/O, :mod:`converters.targets.onnx_io` then removes those edge
nodes so the device feeds the integer tensors its preprocessing makes directly.

Activations are uint8 (asymmetric) with int8 weights, the pairing onnxruntime's CPU kernels are fastest with
(u8 x s8 VNNI/dot-product paths; int8 activations fall back to slower kernels: 1.3x instead of ~2.4x faster than
float on MobileNetV2). A profile asking for symmetric activations (TensorRT: zero point 0) gets int8 ones.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from converters.model import QuantizedModel
from edge_runtime.errors import ConversionError
from edge_runtime.profiles import DeviceProfile

log = logging.getLogger(__name__)
Calibration = Callable[[], Iterator[list[np.ndarray]]]
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def reader(names: Sequence[str], calibration: Calibration):  # type: ignore[no-untyped-def]
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds onnxruntime's calibrator one sample at a time from a fresh iterator."""

        def __init__(self) -> None:
            self._it = calibration()

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else dict(zip(names, batch, strict=True))

        def rewind(self) -> None:
            self._it = calibration()

    return Reader()


def _flatten_gemm_biases(path: Path) -> None:
    """Reshape [1, N] Gemm bias initializers (skl2onnx writes them) to [N].

    onnxruntime 1.32 quantizes a 2-D bias per channel into a DequantizeLinear that only runs once constant-folded
    (it fails with graph optimisation off) and trips over it while adjusting weight scales; a 1-D bias is the same
    Gemm and quantizes cleanly.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    changed = False
    for node in model.graph.node:
        if node.op_type == "Gemm" and len(node.input) == 3 and node.input[2] in inits and uses[node.input[2]] == 1:
            bias = numpy_helper.to_array(inits[node.input[2]])
            if bias.ndim == 2 and bias.shape[0] == 1:
                inits[node.input[2]].CopyFrom(numpy_helper.from_array(bias.reshape(-1), node.input[2]))
                changed = True
    if changed:
        onnx.save(model, str(path))


def preprocess(float_path: Path, out_path: Path) -> Path:
    """onnxruntime's quant_pre_process (shape inference + basic fusions); node names used later refer to it.

    When symbolic shape inference cannot finish, onnxruntime saves its partial model as
    ``sym_shape_infer_temp.onnx`` (plus an external-data file) in the *current directory*. So it runs with a
    scratch folder beside ``out_path`` as the working directory (removed afterwards), never the user's cwd.
    The cwd is process-wide: conversions are not meant to run in parallel threads of one process.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(float_path).resolve(), Path(out_path).resolve()
    scratch = Path(tempfile.mkdtemp(prefix="pre-quant-", dir=dst.parent))
    try:
        with contextlib.chdir(scratch):
            try:
                quant_pre_process(str(src), str(dst))
            except Exception as exc:  # symbolic shape inference fails on some graphs; the ONNX one is enough
                log.info("symbolic shape inference failed (%s); retrying without it", exc)
                try:
                    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
                except Exception as exc2:
                    log.info("quant_pre_process failed (%s); quantizing the model as is", exc2)
                    shutil.copyfile(src, dst)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _flatten_gemm_biases(dst)
    return out_path


def _infos(path: Path):  # type: ignore[no-untyped-def]
    import onnx

    from converters.sources.onnx import graph_inputs, tensor_infos

    model = onnx.load(str(path))
    return model, tensor_infos(graph_inputs(model)), tensor_infos(model.graph.output)


def float_nodes(model) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    """Compute nodes of a QDQ model that take no dequantized input: they run in float."""
    produced_by_dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    skip = {"QuantizeLinear", "DequantizeLinear", "Constant"}
    return tuple(
        f"{n.op_type}:{n.name}"
        for n in model.graph.node
        if n.op_type not in skip and not any(i in produced_by_dq for i in n.input)
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's entropy/percentile calibrators print to stdout; keep stdout for the command's own output."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    if buf.getvalue().strip():
        log.debug("%s", buf.getvalue().strip())


def _nothing_to_quantize(ops: set[str]) -> ConversionError:
    return ConversionError(
        f"nothing in this model can be quantized to int8 by onnxruntime (operators: {', '.join(sorted(ops))}); "
        "use --precision float32 if the profile allows it"
    )


def _check_quantizable(path: Path) -> None:
    """Fail early, with a clear line, when no operator is one onnxruntime's QDQ quantizer handles."""
    import onnx
    from onnxruntime.quantization.registry import QDQRegistry

    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}
    if not ops & set(QDQRegistry):
        raise _nothing_to_quantize({n.op_type for n in model.graph.node})


ENTROPY_BINS = 512  # histogram bins for entropy calibration: 4x the 128 quantized bins, so thresholds can move
ENTROPY_QUANTIZED_BINS = 128


def entropy_ranges(prepared: Path, data, cache: Path) -> Path:  # type: ignore[no-untyped-def]
    """Entropy (KL) calibration ranges, written as onnxruntime's calibration cache for ``quantize_static``.

    ``quantize_static`` builds its entropy calibrator with 128 histogram bins and 128 quantized bins and has no
    option to change them; with equal counts the KL search has exactly one candidate, the full range, so
    "entropy" gives the minmax (max-abs) ranges to the last digit. Calibrating here with ENTROPY_BINS bins lets the
    search clip outliers as the method intends.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ops = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
    with tempfile.TemporaryDirectory(prefix="entropy-", dir=cache.parent) as tmp:
        calibrator = create_calibrator(
            prepared, ops, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy, providers=["CPUExecutionProvider"],
            extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
        )  # fmt: skip
        with _quiet():
            calibrator.collect_data(data)
            ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache)
    data.rewind()
    return cache


def _run_quantize_static(prepared: Path, out: Path, data, extra: dict, kwargs: dict) -> None:  # type: ignore[no-untyped-def]
    from onnxruntime.quantization import CalibrationMethod, quantize_static

    if kwargs["calibrate_method"] == CalibrationMethod.Entropy:
        kwargs = {**kwargs, "calibration_cache_path": str(entropy_ranges(prepared, data, out.with_suffix(".cal.json")))}

    try:
        with _quiet():
            quantize_static(str(prepared), str(out), data, extra_options=extra, **kwargs)
    except Exception as exc:  # onnxruntime raises plain exceptions for unsupported graphs
        # onnxruntime 1.32 can fail adjusting per-channel weight scales against some biases (a ValueError on an
        # array's truth value); quantizing without that adjustment works, so retry once without it.
        log.info("quantize_static failed (%s); retrying without the int32-bias weight-scale adjustment", exc)
        data.rewind()
        try:
            with _quiet():
                quantize_static(
                    str(prepared), str(out), data, extra_options={**extra, "QDQDisableWeightAdjustForInt32Bias": True},
                    **kwargs,
                )  # fmt: skip
        except Exception as exc2:  # as above
            msg = str(exc2).splitlines()[0][:300] if str(exc2) else type(exc2).__name__
            raise ConversionError(f"onnxruntime static quantization failed: {msg}") from exc2


_SAME_SCALE_OPS = {"Reshape", "Concat", "Squeeze", "Unsqueeze", "Transpose", "Flatten"}


def _range_overrides(path: Path, ranges: Mapping[str, tuple[float, float]]) -> dict:
    """onnxruntime TensorQuantOverrides giving each named tensor, and back through reshapes and concatenations
    the tensors it is made of, the range given."""
    import onnx

    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    consts = {i.name for i in model.graph.initializer}
    out: dict = {}
    for name, (lo, hi) in ranges.items():
        todo = [name]
        while todo:
            t = todo.pop()
            out[t] = [{"rmin": np.array(lo, np.float32), "rmax": np.array(hi, np.float32)}]
            node = producer.get(t)
            if node is not None and node.op_type in _SAME_SCALE_OPS:
                todo.extend(i for i in node.input[: 1 if node.op_type != "Concat" else None] if i and i not in consts)
    return out


def _host_has_vnni() -> bool:
    """x86 CPUs with AVX-512 VNNI or AVX-VNNI multiply u8 x s8 in 32 bits; without them onnxruntime's AVX2 kernels
    (vpmaddubsw) add pairs of products in saturating 16 bits, so full 8-bit weights overflow and outputs go wrong."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "avx512_vnni" in flags or "avx_vnni" in flags


def needs_reduced_range(profile: DeviceProfile) -> bool:
    """7-bit weights (onnxruntime's ``reduce_range``) where 8-bit ones could saturate: a target x86 device may lack
    VNNI, and the accuracy guard runs the int8 model on this host, which must compute what the device will."""
    import platform

    host_x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
    return profile.cpu.arch == "x86_64" or (host_x86 and not _host_has_vnni())


def quantize_onnx(
    prepared_path: Path,
    calibration: Calibration,
    profile: DeviceProfile,
    out_path: Path,
    method: str = "minmax",
    nodes_to_exclude: Sequence[str] = (),
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> QuantizedModel:
    """Static QDQ int8 of a (pre-processed) float ONNX model, calibrated on ``calibration()`` samples.

    ``ranges``: tensor name -> (min, max) to quantize with instead of the calibrated range (score heads)."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    if method not in CALIBRATION_METHODS:  # checked by the options too; this guards direct callers
        raise ConversionError(f"unknown calibration method {method!r} (use one of {', '.join(CALIBRATION_METHODS)})")
    q = profile.quantization
    _, inputs, _ = _infos(prepared_path)
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}.get(
        method, CalibrationMethod.Percentile
    )
    act = QuantType.QInt8 if q.symmetric_activations else QuantType.QUInt8  # see the module docstring
    extra = {"ActivationSymmetric": q.symmetric_activations, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.99
    if ranges:
        extra["TensorQuantOverrides"] = _range_overrides(prepared_path, ranges)
    kwargs = dict(
        quant_format=QuantFormat.QDQ,
        per_channel=q.per_channel,
        activation_type=act,
        weight_type=QuantType.QInt8,
        calibrate_method=calib,
        nodes_to_exclude=list(nodes_to_exclude),
        reduce_range=needs_reduced_range(profile),
    )
    _check_quantizable(prepared_path)
    _run_quantize_static(prepared_path, out_path, reader([i.name for i in inputs], calibration), extra, kwargs)
    model, inputs, outputs = _infos(out_path)
    if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        raise _nothing_to_quantize({n.op_type for n in model.graph.node})
    return QuantizedModel(
        format="onnx",
        path=out_path,
        precision="int8",
        method="ort-static-qdq-s8a-s8w" if q.symmetric_activations else "ort-static-qdq-u8a-s8w",
        inputs=inputs,
        outputs=outputs,
        input_quantization=tuple(None for _ in inputs),
        output_quantization=tuple(None for _ in outputs),
        calibration_method=method,
        per_channel=q.per_channel,
        symmetric_activations=q.symmetric_activations,
        float_nodes=float_nodes(model),
        tool_versions={"onnxruntime": onnxruntime.__version__},
    )


def write_float_onnx(float_path: Path, precision: str, out_path: Path) -> QuantizedModel:
    """A float32 copy, or float16 weights and compute with float32 I/O (onnxruntime's converter)."""
    import onnx
    import onnxruntime

    if precision == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(float_path)), keep_io_types=True)
        onnx.save(model, str(out_path))
    else:
        shutil.copyfile(float_path, out_path)
    _, inputs, outputs = _infos(out_path)
    return QuantizedModel(
        format="onnx",
        path=out_path,
        precision="float16" if precision == "float16" else "float32",
        method=f"onnx-{precision}",
        inputs=inputs,
        outputs=outputs,
        input_quantization=tuple(None for _ in inputs),
        output_quantization=tuple(None for _ in outputs),
        tool_versions={"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
    )
