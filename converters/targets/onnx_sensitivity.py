"""Per-node error analysis for the ONNX target: which float nodes the int8 model adds the most error across."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _sqnr(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    signal = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in ref)
    noise = sum(float(np.sum(np.square(r.astype(np.float64) - g))) for r, g in zip(ref, got, strict=True))
    if noise == 0.0:
        return 100.0
    if not (math.isfinite(noise) and math.isfinite(signal)):  # inf/NaN in a tensor: as bad as it gets
        return -100.0
    return max(-100.0, min(100.0, 10 * math.log10(max(signal, 1e-30) / noise)))


def onnx_sensitivity(prepared: Path, qdq: Path, reader_factory: Callable[[], object], workdir: Path) -> list[list[str]]:
    """Rank float-model nodes by how much error the int8 model adds across each node (SQNR drop, dB).

    Each entry is the node plus the quantizable nodes feeding it: keeping a node in float only helps when the
    tensors it reads are not quantized either.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    aug_f, aug_q = workdir / "sens_float.onnx", workdir / "sens_qdq.onnx"
    modify_model_output_intermediate_tensors(str(prepared), str(aug_f))
    modify_model_output_intermediate_tensors(str(qdq), str(aug_q))
    # Basic optimisations (constant folding) as in a normal session: some QDQ graphs from onnxruntime 1.32 only
    # run once DequantizeLinear of constant per-channel biases is folded.
    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    try:
        f_acts = collect_activations(str(aug_f), reader_factory(), opts)  # type: ignore[arg-type]
        q_acts = collect_activations(str(aug_q), reader_factory(), opts)  # type: ignore[arg-type]
    except Exception as exc:  # onnxruntime's own exception types
        log.warning("per-node error analysis failed: %s", str(exc).splitlines()[0][:200])
        return []
    model = onnx.load(str(prepared))
    producer = {o: n for n in model.graph.node for o in n.output}
    scored = []
    for node in model.graph.node:
        out = node.output[0] if node.output else None
        if out not in f_acts or out not in q_acts:
            continue
        ins = [i for i in node.input if i in f_acts and i in q_acts]
        sqnr_in = min((_sqnr(f_acts[i], q_acts[i]) for i in ins), default=100.0)
        drop = sqnr_in - _sqnr(f_acts[out], q_acts[out])
        feeders = [producer[i].name for i in node.input if i in producer and producer[i].name]
        scored.append((drop, [node.name, *feeders]))
    scored.sort(key=lambda t: -t[0])
    log.info("sensitivity (SQNR drop dB): %s", [(round(d, 1), g[0]) for d, g in scored[:8]])
    return [g for _, g in scored]
