"""Stateful streaming models: check the state bindings, and give calibration the states the device will see.

A recurrent model's state input is not something a user has data for. The device starts from zero state and
feeds each state output back (edge_runtime.api); calibration does the same with the float model over the
samples in order, so the quantizer sees realistic state ranges and the held-back check runs a real stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from converters import calibration as cal
from converters.model import FloatModel
from edge_runtime.errors import ConversionError
from edge_runtime.package.manifest import InputSpec, StateBinding


def check_bindings(fm: FloatModel, bindings: Sequence[StateBinding]) -> None:
    """Every --state INPUT:OUTPUT names a model input and output of the same shape."""
    ins = {t.name: t for t in fm.inputs}
    outs = {t.name: t for t in fm.outputs}
    for b in bindings:
        if b.input not in ins:
            raise ConversionError(f"--state {b.input}:{b.output}: the model has no input {b.input!r} "
                                  f"(inputs: {', '.join(ins)})")  # fmt: skip
        if b.output not in outs:
            raise ConversionError(f"--state {b.input}:{b.output}: the model has no output {b.output!r} "
                                  f"(outputs: {', '.join(outs)})")  # fmt: skip
        a, o = ins[b.input].shape, outs[b.output].shape
        if len(a) != len(o) or any(x != y and -1 not in (x, y) for x, y in zip(a, o, strict=False)):
            raise ConversionError(f"--state {b.input}:{b.output}: shapes differ ({list(a)} vs {list(o)})")
    if len(bindings) >= len(fm.inputs):
        raise ConversionError("every model input is a --state input: the model needs at least one data input")


class RolledState(cal.Dataset):
    """``base``'s samples as dicts holding each data input and the state the float model has at that sample."""

    def __init__(self, base: cal.Dataset, specs: Sequence[InputSpec], bindings: Sequence[StateBinding],
                 float_onnx: Path) -> None:  # fmt: skip
        self.base, self.specs, self.bindings, self.float_onnx = base, list(specs), list(bindings), float_onnx
        self.description, self.frame_order, self.labels = base.description, base.frame_order, base.labels

    def __len__(self) -> int:
        return len(self.base)

    def samples(self) -> Iterator[np.ndarray]:
        from converters.evaluate import ModelRunner

        runner = ModelRunner(self.float_onnx)
        state_in = {b.input for b in self.bindings}
        data_specs = [s for s in self.specs if s.name not in state_in]
        build = cal.InputBuilder(data_specs, self.base.frame_order, self.base.description)
        by_name = {s.name: s for s in self.specs}
        state = {b.input: np.zeros(by_name[b.input].shape, np.float32) for b in self.bindings}
        for i, raw in enumerate(self.base.samples()):
            sample = dict(raw) if isinstance(raw, dict) else {s.name: raw for s in data_specs}
            yield {**sample, **state}  # type: ignore[misc]
            feeds = dict(zip([s.name for s in data_specs], build(raw, i), strict=True)) | state
            outs = dict(zip(runner.output_names, runner.run_float([feeds[n] for n in runner.input_names]),
                            strict=True))  # fmt: skip
            state = {b.input: outs[b.output].astype(np.float32) for b in self.bindings}
