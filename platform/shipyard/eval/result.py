"""What one eval suite returns: its metrics, each metric's per-row scores, and samples for the report."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SuiteResult:
    metrics: dict[str, float]
    samples: list[dict] = field(default_factory=list)
    per_prompt: list[float] = field(default_factory=list)  # reward suites: one score per prompt
    # metric -> one entry per row, in row order: a score (the metric is their mean) or a
    # [numerator, denominator] pair (the metric is sum/sum, through ``shipyard.eval.stats.TRANSFORMS``)
    rows: dict[str, list] = field(default_factory=dict)
