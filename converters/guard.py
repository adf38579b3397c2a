"""Accuracy guard: compare the quantized model with the float one on held-back data, and repair a miss.

Metrics: top-1 agreement for classifiers; mean cosine similarity and max absolute error of the outputs for every
model. Remedies, in order: the other calibration methods (minmax, entropy, percentile) the target can do (the
others are recorded as skipped), then keeping the most error-sensitive nodes in float, found by comparing float
and int8 intermediate tensors node by node (ONNX here; TFLite in converters.targets.tflite_sensitivity).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converters.model import QuantizedModel
from edge_runtime.errors import AccuracyBudgetError
from edge_runtime.package.manifest import AccuracyReport
from edge_runtime.profiles import DeviceProfile

log = logging.getLogger(__name__)
METHOD_ORDER = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Agreement:
    samples: int
    top1: float | None
    cosine: float
    max_abs: float


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def measure(pairs: Iterable[tuple[list[np.ndarray], list[np.ndarray]]], class_output: int | None) -> Agreement:
    """``pairs`` yields (float outputs, quantized outputs dequantized) per held-back sample."""
    n, agree, cos_sum, max_abs = 0, 0, 0.0, 0.0
    for ref, got in pairs:
        fl = [i for i, r in enumerate(ref) if r.dtype.kind == "f"]
        a = np.concatenate([ref[i].astype(np.float64).ravel() for i in fl])
        b = np.concatenate([got[i].astype(np.float64).ravel() for i in fl])
        cos_sum += _cosine(a, b)
        max_abs = max(max_abs, float(np.max(np.abs(a - b))) if a.size else 0.0)
        if class_output is not None:
            agree += int(np.argmax(ref[class_output]) == np.argmax(got[class_output]))
        n += 1
    if n == 0:
        raise AccuracyBudgetError("no held-back samples to check the quantized model on")
    return Agreement(n, agree / n if class_output is not None else None, cos_sum / n, max_abs)


def budget_for(profile: DeviceProfile, classifier: bool) -> dict[str, float]:
    b = profile.budgets
    return {"min_top1_agreement": b.min_top1_agreement} if classifier else {"min_cosine": b.min_cosine}


def passes(ag: Agreement, budget: dict[str, float]) -> bool:
    if "min_top1_agreement" in budget:
        return ag.top1 is not None and ag.top1 >= budget["min_top1_agreement"]
    return ag.cosine >= budget["min_cosine"]


def report(ag: Agreement, budget: dict[str, float]) -> AccuracyReport:
    return AccuracyReport(
        samples=ag.samples,
        top1_agreement=ag.top1,
        cosine_similarity=round(ag.cosine, 6),
        max_abs_error=ag.max_abs,
        budget=budget,
        passed=passes(ag, budget),
    )


def _key(ag: Agreement) -> tuple[float, float]:
    return (ag.top1 if ag.top1 is not None else 0.0, ag.cosine)


def _describe(ag: Agreement) -> str:
    parts = [f"top-1 agreement {ag.top1:.4f}"] if ag.top1 is not None else []
    return ", ".join(parts + [f"cosine {ag.cosine:.4f}", f"max |err| {ag.max_abs:.4g}"])


@dataclass
class GuardResult:
    model: QuantizedModel
    agreement: AccuracyReport
    remedies: list[str] = field(default_factory=list)


Quantize = Callable[[str, Sequence[str], str], QuantizedModel]  # (method, nodes kept float, tag) -> model
Evaluate = Callable[[QuantizedModel], Agreement]
Sensitivity = Callable[[QuantizedModel], list[list[str]]]  # worst first: groups of nodes to keep in float


@dataclass
class _Search:
    """What the guard has tried so far and the best model seen."""

    budget: dict[str, float]
    progress: Callable[[str], None]
    tried: list[str] = field(default_factory=list)
    methods_run: list[str] = field(default_factory=list)
    best: tuple[QuantizedModel, Agreement] | None = None

    def check(self, qm: QuantizedModel, ag: Agreement) -> bool:
        if self.best is None or _key(ag) > _key(self.best[1]):
            self.best = (qm, ag)
        return passes(ag, self.budget)


def _try_methods(s: _Search, quantize: Quantize, evaluate: Evaluate, order: list[str], supported: Sequence[str],
                 target: str) -> GuardResult | None:  # fmt: skip
    """Calibration methods in ``order``; the ones the target cannot do are recorded as skipped, not tried."""
    first = order[0]
    for method in order:
        if method not in supported:
            s.tried.append(f"calibration method {method} skipped: the {target} target calibrates with "
                           f"{', '.join(supported)} only")  # fmt: skip
            s.progress(f"guard: {method} calibration skipped ({target} target: {', '.join(supported)} only)")
            continue
        qm = quantize(method, (), method)
        ag = evaluate(qm)
        s.methods_run.append(method)
        s.progress(f"guard: {method} calibration: {_describe(ag)}")
        if s.check(qm, ag):
            remedies = [] if method == first else s.tried + [f"calibration method {method} met the budget"]
            return GuardResult(qm, report(ag, s.budget), remedies)
        s.tried.append(f"calibration method {method} missed the budget ({_describe(ag)})")
    return None


def _try_float_nodes(s: _Search, quantize: Quantize, evaluate: Evaluate, sensitivity: Sensitivity,
                     max_float_nodes: int, first_method: str) -> GuardResult | None:  # fmt: skip
    """Keep the 1, 2, 4, 8 most error-sensitive node groups in float (at most ``max_float_nodes`` nodes)."""
    assert s.best is not None
    groups = sensitivity(s.best[0])[:8]
    method = s.best[0].calibration_method or first_method
    for k in sorted({min(k, len(groups)) for k in (1, 2, 4, 8)} - {0}):
        keep = sorted({n for g in groups[:k] for n in g})
        if len(keep) > max_float_nodes:
            break
        qm = quantize(method, keep, f"{method}-float{k}")
        ag = evaluate(qm)
        s.progress(f"guard: {len(keep)} sensitive node(s) kept in float: {_describe(ag)}")
        if s.check(qm, ag):
            s.tried.append(f"kept {len(keep)} error-sensitive node(s) in float: {', '.join(keep)}")
            return GuardResult(qm, report(ag, s.budget), s.tried)
        s.tried.append(f"keeping {len(keep)} sensitive node(s) in float missed the budget ({_describe(ag)})")
    if not groups:
        s.tried.append("per-node error analysis found no node to keep in float")
    return None


def guard(
    quantize: Quantize,
    evaluate: Evaluate,
    budget: dict[str, float],
    first_method: str,
    sensitivity: Sensitivity | None = None,
    progress: Callable[[str], None] = lambda s: None,
    max_float_nodes: int = 8,
    methods: Sequence[str] = METHOD_ORDER,
    target: str = "ONNX",
) -> GuardResult:
    """Quantize, check, and try the remedies in order until the budget is met; AccuracyBudgetError otherwise.

    ``methods``: the calibration methods the target can do (TFLite: minmax only); the others are recorded as
    skipped in the remedies rather than tried.
    """
    if first_method not in methods:
        raise ValueError(f"first calibration method {first_method!r} is not one the {target} target supports")
    s = _Search(budget, progress)
    order = [first_method] + [m for m in METHOD_ORDER if m != first_method]
    result = _try_methods(s, quantize, evaluate, order, methods, target)
    if result is None and sensitivity is not None and max_float_nodes > 0:
        result = _try_float_nodes(s, quantize, evaluate, sensitivity, max_float_nodes, first_method)
    if result is not None:
        return result
    assert s.best is not None
    want = ", ".join(f"{k} {v}" for k, v in budget.items())
    skipped = [m for m in order if m not in methods]
    raise AccuracyBudgetError(
        f"int8 model misses the accuracy budget ({want}): best {_describe(s.best[1])} after trying "
        f"{', '.join(s.methods_run)} calibration"
        + (f" ({', '.join(skipped)}: not supported by the {target} target)" if skipped else "")
        + (
            f" and keeping up to {max_float_nodes} sensitive node(s) in float"
            if sensitivity and max_float_nodes
            else ""
        )
    )


def _sqnr(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    signal = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in ref)
    noise = sum(float(np.sum(np.square(r.astype(np.float64) - g))) for r, g in zip(ref, got, strict=True))
    if noise == 0.0:
        return 100.0
    return min(100.0, 10 * math.log10(max(signal, 1e-30) / noise))


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
