"""Run a float or quantized model file on the laptop: inputs in, outputs (raw or dequantized) out.

Used by the accuracy guard, the reference statistics and the golden pairs. onnxruntime for .onnx files, LiteRT
(ai_edge_litert) for .tflite files; one thread so figures are repeatable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from edge_runtime.errors import ConversionError, MissingDependencyError
from edge_runtime.package.manifest import Quantization
from edge_runtime.quant import dequantize, quantize


def _quant(details: dict) -> Quantization | None:
    qp = details.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", []), dtype=np.float64)
    if scales.size == 0 or details["dtype"] not in (np.int8, np.uint8):
        return None
    zps = np.asarray(qp.get("zero_points", [0] * scales.size)).astype(int)
    axis = int(qp.get("quantized_dimension", 0)) if scales.size > 1 else None
    return Quantization(scale=tuple(scales.tolist()), zero_point=tuple(zps.tolist()), axis=axis)


class ModelRunner:
    """One model file loaded for evaluation; ``run`` returns what the model returns, ``run_float`` dequantized."""

    def __init__(self, path: Path, threads: int = 1, output_quant: Sequence[Quantization | None] | None = None) -> None:
        """``output_quant``: how to dequantize integer ONNX outputs (an ONNX file does not say; the manifest does)."""
        self.path = Path(path)
        self.is_tflite = self.path.suffix == ".tflite"
        if self.is_tflite:
            self._load_tflite(threads)
        else:
            self._load_onnx(threads)
            if output_quant is not None:
                self.output_quant = list(output_quant)

    def _load_onnx(self, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception classes
            raise ConversionError(
                f"onnxruntime cannot load {self.path.name}: {str(exc).splitlines()[0][:300]}"
            ) from exc
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self.input_quant: list[Quantization | None] = [None] * len(self.input_names)
        self.output_quant: list[Quantization | None] = [None] * len(self.output_names)

    def _load_tflite(self, threads: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise MissingDependencyError("ai-edge-litert (to run TFLite models)", "tflite") from exc
        try:
            self._interp = Interpreter(model_path=str(self.path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ConversionError(f"LiteRT cannot load {self.path.name}: {str(exc).splitlines()[0][:300]}") from exc
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        self.input_names = [d["name"] for d in self._in]
        self.output_names = [d["name"] for d in self._out]
        self.input_quant = [_quant(d) for d in self._in]
        self.output_quant = [_quant(d) for d in self._out]

    def _fit_inputs(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Quantize float inputs for an int8 model (a convenience; the device uses the LUT in preprocess)."""
        if not self.is_tflite:
            return inputs
        out = []
        for x, d, q in zip(inputs, self._in, self.input_quant, strict=True):
            dt = np.dtype(d["dtype"])
            out.append(quantize(x, q, dt) if q is not None and x.dtype.kind == "f" else x.astype(dt, copy=False))
        return out

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Inputs as the model takes them (batch 1) -> outputs as the model returns them."""
        inputs = self._fit_inputs(inputs)
        if not self.is_tflite:
            return list(self._sess.run(self.output_names, dict(zip(self.input_names, inputs, strict=True))))
        for d, x in zip(self._in, inputs, strict=True):
            self._interp.set_tensor(d["index"], x)
        self._interp.invoke()
        return [self._interp.get_tensor(d["index"]).copy() for d in self._out]

    def run_float(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs dequantized to float32."""
        return [dequantize(y, q) for y, q in zip(self.run(inputs), self.output_quant, strict=True)]

    def map(self, batches: Iterable[list[np.ndarray]]) -> Iterator[list[np.ndarray]]:
        for b in batches:
            yield self.run_float(b)
