"""Accuracy guard: compare the quantized model with the float one on held-back data, and repair a miss.

Metrics: top-1 agreement for classifiers; mean cosine similarity and max absolute error of the outputs for every
model. Remedies, in order: the other calibration methods (minmax, entropy, percentile) the target can do (the
others are recorded as skipped), then keeping the most error-sensitive nodes in float, found by comparing float
and int8 intermediate tensors node by node (ONNX here; TFLite in converters.targets.tflite_sensitivity).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from converters import evidence as ev
from converters.model import QuantizedModel
from edge_runtime.errors import AccuracyBudgetError
from edge_runtime.package.manifest import AccuracyReport
from edge_runtime.profiles import DeviceProfile

METHOD_ORDER = ("minmax", "entropy", "percentile")
MIN_COSINE_SIZE = 16  # outputs with fewer values per sample are compared over the whole held-back set


@dataclass(frozen=True)
class Agreement:
    """Float vs quantized outputs on the held-back samples (and against labels where they carry one)."""

    samples: int
    top1: float | None
    cosine: float
    max_abs: float
    flips: int = 0
    weighted_flips: float = 0.0
    labelled: int = 0
    float_correct: int = 0
    int8_correct: int = 0
    regressions: int = 0  # labelled samples the float model gets right and the quantized one wrong
    gains: int = 0  # and the other way round


ZERO_NORM = 1e-6  # outputs this small (a wake-word score of 1e-8 on speech without the word) count as zero


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na <= ZERO_NORM and nb <= ZERO_NORM:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


@dataclass
class _Tally:
    n: int = 0
    agree: int = 0
    weighted: float = 0.0
    cos_sum: float = 0.0
    max_abs: float = 0.0
    labelled: int = 0
    f_ok: int = 0
    q_ok: int = 0
    reg: int = 0
    gain: int = 0
    small_ref: list[np.ndarray] = field(default_factory=list)
    small_got: list[np.ndarray] = field(default_factory=list)

    def add_classes(self, ref: np.ndarray, got: np.ndarray, label: int | None, activation: str) -> None:
        f, q = int(np.argmax(ref)), int(np.argmax(got))
        if f == q:
            self.agree += 1
        else:
            self.weighted += ev.flip_weight(ref, activation)
        if label is not None:
            self.labelled += 1
            self.f_ok, self.q_ok = self.f_ok + (f == label), self.q_ok + (q == label)
            self.reg, self.gain = self.reg + (f == label != q), self.gain + (q == label != f)


def cosine_of(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity as the guard takes it (two essentially zero vectors agree)."""
    return _cosine(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())


def measure(
    pairs: Iterable[tuple[list[np.ndarray], list[np.ndarray]]],
    class_output: int | None,
    labels: Iterable[int | None] | None = None,
    activation: str = "none",
) -> Agreement:
    """``pairs`` yields (float outputs, quantized outputs dequantized) per held-back sample; ``labels`` the class
    index of each sample (None where it has none); ``activation`` turns class scores into probabilities."""
    t = _Tally()
    label_it = iter(labels) if labels is not None else None
    for ref, got in pairs:
        fl = [i for i, r in enumerate(ref) if r.dtype.kind == "f"]
        a = np.concatenate([ref[i].astype(np.float64).ravel() for i in fl])
        b = np.concatenate([got[i].astype(np.float64).ravel() for i in fl])
        if a.size >= MIN_COSINE_SIZE:
            t.cos_sum += _cosine(a, b)
        else:  # a scalar score's cosine is 1 whatever its value: judge the few values over the whole set
            t.small_ref.append(a)
            t.small_got.append(b)
        t.max_abs = max(t.max_abs, float(np.max(np.abs(a - b))) if a.size else 0.0)
        label = next(label_it, None) if label_it is not None else None
        if class_output is not None:
            t.add_classes(ref[class_output], got[class_output], label, activation)
        t.n += 1
    if t.n == 0:
        raise AccuracyBudgetError("no held-back samples to check the quantized model on")
    top1 = t.agree / t.n if class_output is not None else None
    if t.small_ref:  # every sample has the same output sizes: all small, or none
        cosine = _cosine(np.concatenate(t.small_ref), np.concatenate(t.small_got))
    else:
        cosine = t.cos_sum / t.n
    return Agreement(t.n, top1, cosine, t.max_abs, t.n - t.agree if top1 is not None else 0,
                     t.weighted, t.labelled, t.f_ok, t.q_ok, t.reg, t.gain)  # fmt: skip


def budget_for(profile: DeviceProfile, classifier: bool, labelled: bool = False) -> dict[str, float]:
    """The budget the guard checks: classifiers also keep the output cosine; labelled data adds the drop."""
    b = profile.budgets
    if not classifier:
        return {"min_cosine": b.min_cosine}
    budget = {"min_top1_agreement": b.min_top1_agreement, "min_cosine": b.min_cosine}
    if labelled:
        budget["max_accuracy_drop"] = b.max_accuracy_drop
    return budget


def verdict(ag: Agreement, budget: dict[str, float]) -> ev.Verdict:
    """Pass, fail or undecided on the evidence; undecided stands only while the outputs meet the cosine budget."""
    min_cos = budget.get("min_cosine", -1.0)
    if "min_top1_agreement" not in budget or ag.top1 is None:
        return ev.decide_cosine(ag.cosine, min_cos)
    if "max_accuracy_drop" in budget and ag.labelled == ag.samples:
        v = ev.decide_accuracy(ag.samples, ag.float_correct, ag.int8_correct, ag.regressions, ag.gains,
                               budget["max_accuracy_drop"])  # fmt: skip
    else:
        v = ev.decide_agreement(ag.samples, ag.weighted_flips, ag.flips, ag.cosine, budget["min_top1_agreement"])
    if v.decision != "fail" and ag.cosine < min_cos:
        return ev.Verdict("fail", f"{v.reason}; outputs differ: cosine {ag.cosine:.4f} < {min_cos}")
    return v


def passes(ag: Agreement, budget: dict[str, float]) -> bool:
    return verdict(ag, budget).decision != "fail"


def report(ag: Agreement, budget: dict[str, float]) -> AccuracyReport:
    v = verdict(ag, budget)
    n, labelled = ag.samples, ag.labelled == ag.samples and ag.top1 is not None
    return AccuracyReport(
        samples=n,
        top1_agreement=ag.top1,
        cosine_similarity=round(ag.cosine, 6),
        max_abs_error=ag.max_abs,
        budget=budget,
        passed=v.decision != "fail",
        decision=v.decision,
        reason=v.reason,
        samples_needed=v.needed,
        weighted_flips=round(ag.weighted_flips, 4) if ag.top1 is not None else None,
        labelled_samples=ag.labelled,
        float_accuracy=ag.float_correct / n if labelled else None,
        int8_accuracy=ag.int8_correct / n if labelled else None,
        float_accuracy_ci=ev.wilson(ag.float_correct, n) if labelled else None,
        int8_accuracy_ci=ev.wilson(ag.int8_correct, n) if labelled else None,
    )


_RANK = {"pass": 2, "undecided": 1, "fail": 0}


def _key(ag: Agreement, budget: dict[str, float]) -> tuple[float, ...]:
    acc = ag.int8_correct / ag.samples if ag.labelled == ag.samples else 0.0
    return (_RANK[verdict(ag, budget).decision], acc, -ag.weighted_flips, ag.cosine)


def _describe(ag: Agreement) -> str:
    parts = [f"top-1 agreement {ag.top1:.4f}"] if ag.top1 is not None else []
    if ag.labelled and ag.labelled == ag.samples and ag.top1 is not None:
        parts.append(f"accuracy {ag.float_correct / ag.samples:.4f} float, {ag.int8_correct / ag.samples:.4f} int8")
    return ", ".join(parts + [f"cosine {ag.cosine:.4f}", f"max |err| {ag.max_abs:.4g}"])


def table(rows: Sequence[tuple[str, Agreement, ev.Verdict]]) -> list[str]:
    """One line per remedy tried: what it measured and what the guard decided."""
    out = [f"{'remedy':<34} {'agree':>6} {'flips(w)':>9} {'float acc':>9} {'int8 acc':>9} {'cosine':>7} "
           f"{'max err':>8}  decision"]  # fmt: skip
    for name, ag, v in rows:
        lab = ag.labelled == ag.samples and ag.top1 is not None
        out.append(
            f"{name[:34]:<34} {'-' if ag.top1 is None else f'{ag.top1:.4f}':>6} "
            f"{'-' if ag.top1 is None else f'{ag.flips}({ag.weighted_flips:.2f})':>9} "
            f"{f'{ag.float_correct / ag.samples:.4f}' if lab else '-':>9} "
            f"{f'{ag.int8_correct / ag.samples:.4f}' if lab else '-':>9} {ag.cosine:>7.4f} {ag.max_abs:>8.4g}  "
            f"{v.decision}"
        )
    return out


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
    """What the guard has tried so far, what each try measured, and the best model seen."""

    budget: dict[str, float]
    progress: Callable[[str], None]
    tried: list[str] = field(default_factory=list)
    methods_run: list[str] = field(default_factory=list)
    rows: list[tuple[str, Agreement, ev.Verdict]] = field(default_factory=list)
    best: tuple[QuantizedModel, Agreement] | None = None

    def check(self, qm: QuantizedModel, ag: Agreement, name: str) -> bool:
        v = verdict(ag, self.budget)
        self.rows.append((name, ag, v))
        self.progress(f"guard: {name}: {_describe(ag)}: {v.decision}")
        if self.best is None or _key(ag, self.budget) > _key(self.best[1], self.budget):
            self.best = (qm, ag)
        return v.decision != "fail"

    def result(self, qm: QuantizedModel, ag: Agreement, remedies: list[str]) -> GuardResult:
        self.print_table()
        rep = report(ag, self.budget)
        self.progress(f"guard: {rep.decision}: {rep.reason}")
        return GuardResult(qm, rep, remedies)

    def print_table(self) -> None:
        for line in table(self.rows):
            self.progress(f"guard | {line}")


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
        if s.check(qm, ag, f"{method} calibration"):
            remedies = [] if method == first else s.tried + [f"calibration method {method} met the budget"]
            return s.result(qm, ag, remedies)
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
        if s.check(qm, ag, f"{method}, {len(keep)} node(s) in float"):
            s.tried.append(f"kept {len(keep)} error-sensitive node(s) in float: {', '.join(keep)}")
            return s.result(qm, ag, s.tried)
        s.tried.append(f"keeping {len(keep)} sensitive node(s) in float missed the budget ({_describe(ag)})")
    if not groups:
        s.tried.append("per-node error analysis found no node to keep in float")
    return None


def _fixes(budget: dict[str, float], ag: Agreement, max_float_nodes: int, supported: Sequence[str]) -> str:
    """What the user can change, named by flag or data."""
    fixes = []
    if "min_top1_agreement" in budget and ag.labelled < ag.samples:
        fixes.append("labelled --validation data (a folder per class, labels.json or labels.csv) to judge accuracy")
    fixes.append(f"more or more typical --calibration data (--max-samples; {ag.samples} held back now)")
    fixes.append(f"--max-float-nodes above {max_float_nodes} to keep more nodes in float")
    if len(supported) < len(METHOD_ORDER):
        fixes.append("--format onnx for entropy and percentile calibration")
    fixes.append("or a budget in a profile of your own (--profile FILE.yaml)")
    return "; to fix, give " + ", ".join(fixes)


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
    s.print_table()
    want = ", ".join(f"{k} {v}" for k, v in budget.items())
    skipped = [m for m in order if m not in methods]
    best = s.best[1]
    raise AccuracyBudgetError(
        f"int8 model misses the accuracy budget ({want}): best {verdict(best, budget).reason} after trying "
        f"{', '.join(s.methods_run)} calibration"
        + (f" ({', '.join(skipped)}: not supported by the {target} target)" if skipped else "")
        + (f" and keeping up to {max_float_nodes} sensitive node(s) in float" if sensitivity and max_float_nodes
           else "")
        + _fixes(budget, best, max_float_nodes, methods)
    )
