"""Confidence intervals for eval metrics: percentile bootstrap over rows, paired for differences.

Every suite metric is either a mean of per-row scores (accuracy, ROUGE-L, reward) or a ratio of
per-row sums (bits per byte = summed nats / summed bytes / ln 2; perplexity = exp(nats / tokens)).
A row's entry is its score, or its ``[numerator, denominator]`` pair for a ratio. Two models
measured on the same rows are compared paired: each resample draws the same row indices for both,
so the row-to-row spread they share cancels out of the difference.

    bootstrap_ci([0, 1, 1, 0, 1])                  # (lo, hi) of the mean
    paired_diff_ci(candidate_rows, baseline_rows)  # (lo, hi) of candidate - baseline
"""

from __future__ import annotations

import math
from collections.abc import Sequence

N_RESAMPLES = 2000
LN2 = math.log(2)


def _matrix(rows: Sequence):
    """(n, 2) float array: a mean metric's rows become ``[score, 1]``, a ratio's stay ``[num, den]``."""
    import numpy as np

    if len(rows) == 0:
        raise ValueError("no rows to bootstrap")
    arr = np.asarray(rows, dtype=float)
    if arr.ndim == 1:
        arr = np.stack([arr, np.ones_like(arr)], axis=1)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"rows must be scores or [numerator, denominator] pairs, got shape {arr.shape}")
    return arr


def point(rows: Sequence, transform=None) -> float:
    """The metric itself: sum of numerators / sum of denominators (a mean when rows are scores)."""
    arr = _matrix(rows)
    value = float(arr[:, 0].sum() / arr[:, 1].sum())
    return transform(value) if transform else value


def _resampled(arr, idx, transform):
    import numpy as np

    num, den = arr[:, 0][idx].sum(axis=1), arr[:, 1][idx].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = num / den
    return transform(values) if transform else values


def _indices(n: int, n_resamples: int, seed: int):
    import numpy as np

    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def bootstrap_ci(rows: Sequence, transform=None, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the metric over ``rows`` (resampled with replacement).

    ``transform`` maps the ratio to the reported metric, vectorized (``numpy.exp`` for perplexity
    from nats/token). The same seed gives the same interval.
    """
    import numpy as np

    arr = _matrix(rows)
    values = _resampled(arr, _indices(len(arr), n_resamples, seed), transform)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_diff_ci(candidate: Sequence, baseline: Sequence, transform=None, confidence: float = 0.95,
                   n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of metric(candidate) - metric(baseline), rows paired by index."""
    import numpy as np

    a, b = _matrix(candidate), _matrix(baseline)
    if len(a) != len(b):
        raise ValueError(f"paired rows differ in number: {len(a)} vs {len(b)} (were both measured on the same rows?)")
    idx = _indices(len(a), n_resamples, seed)
    diff = _resampled(a, idx, transform) - _resampled(b, idx, transform)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.nanpercentile(diff, [tail, 100 - tail])
    return float(lo), float(hi)


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """Summed negative log-likelihood in nats over the text's UTF-8 byte count, in bits per byte.

    Unlike perplexity per token it does not depend on the tokenizer, so models with different
    vocabularies compare on it (bits per byte = nats per token x tokens per byte / ln 2).
    """
    if n_bytes <= 0:
        raise ValueError("bits per byte of an empty text")
    return nats / n_bytes / LN2


def transform_for(metric: str):
    """How a metric comes from its ratio of row sums: perplexities are exp(nats / tokens)."""
    import numpy as np

    return np.exp if metric.rsplit(".", 1)[-1].endswith("perplexity") else None


def metric_ci(metric: str, rows: Sequence, **kw) -> tuple[float, float]:
    """``bootstrap_ci`` of ``metric`` (``<suite>.<metric>`` or a bare name) with its transform."""
    return bootstrap_ci(rows, transform_for(metric), **kw)


def metric_diff_ci(metric: str, candidate: Sequence, baseline: Sequence, **kw) -> tuple[float, float]:
    """``paired_diff_ci`` of ``metric`` with its transform."""
    return paired_diff_ci(candidate, baseline, transform_for(metric), **kw)
