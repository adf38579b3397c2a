"""Score heads keep their resolution after int8.

A detector's raw score logits span a wide range (BlazeFace: about -140..+10), so their int8 step is about 0.6 and
the scores that matter, sigmoid 0.5..1.0 (logits 0..+5), take only a handful of values: a threshold cannot be
tuned and a logit near 0 lands exactly on 0.5. Calibrating the score tensor to SCORE_LOGIT_RANGE instead gives
0.078-wide steps, over 60 distinct scores between 0.5 and 1.0; logits beyond the range saturate, which changes a
score by less than 5e-5 (sigmoid(10) = 0.99995). The cost: none at run time (the same int8 graph, other scales).
"""

from __future__ import annotations

import numpy as np

from edge_runtime.package.manifest import Decoding, SsdDecoding

SCORE_LOGIT_RANGE = (-10.0, 10.0)
MIN_DISTINCT = 32  # distinct scores between 0.5 and 1.0 a threshold needs


def score_ranges(decoding: Decoding | None) -> dict[str, tuple[float, float]]:
    """Tensor name -> calibration range for the score heads of ``decoding`` (SSD sigmoid scores)."""
    if isinstance(decoding, SsdDecoding) and decoding.score_activation == "sigmoid":
        return {decoding.scores_output: SCORE_LOGIT_RANGE}
    return {}


def distinct_high_scores(logits: np.ndarray) -> int:
    """Distinct sigmoid scores in [0.5, 0.999] among ``logits`` (dequantized raw score outputs)."""
    s = 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, np.float64).ravel(), -100, 100)))
    return int(np.unique(np.round(s[(s >= 0.5) & (s <= 0.999)], 7)).size)


def score_levels(scale: float, zero_point: int, dtype: str = "int8") -> int:
    """How many values of an 8-bit score-logit tensor map to sigmoid scores in [0.5, 0.999] (what a threshold is
    set in): its resolution, measured on the quantization rather than on whichever frames were at hand."""
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    q = np.arange(lo, hi + 1, dtype=np.float64)
    s = 1.0 / (1.0 + np.exp(-np.clip(scale * (q - zero_point), -100, 100)))
    return int(np.unique(np.round(s[(s >= 0.5) & (s <= 0.999)], 7)).size)


def as_decoded(decoding: Decoding | None, output_names: list[str]):  # type: ignore[no-untyped-def]
    """output index -> the function the decoder applies to it (SSD sigmoid scores), for the accuracy guard:
    score logits of -140 and -10 are both "no face"; the guard compares the scores the decoder will see."""
    if not isinstance(decoding, SsdDecoding) or decoding.score_activation != "sigmoid":
        return {}
    if decoding.scores_output not in output_names:
        return {}
    clip = decoding.score_clip or 100.0

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return (1.0 / (1.0 + np.exp(-np.clip(x.astype(np.float64), -clip, clip)))).astype(np.float32)

    return {output_names.index(decoding.scores_output): sigmoid}
