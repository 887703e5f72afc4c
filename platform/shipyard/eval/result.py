"""What one eval suite returns: its metrics, each metric's per-row scores, and samples for the report."""

from __future__ import annotations

from dataclasses import dataclass, field

ALIGNMENT_ROW = "alignment"
# Rows that are not models: what the align, reward_model, optimize and pretrain stages measured themselves
# (their reports' numbers, and per-row scores where the report has them), named in gates as <row>.<key>.
STAGE_ROWS = (ALIGNMENT_ROW, "reward_model", "optimization", "pretraining")
STAGE_TITLES = {
    ALIGNMENT_ROW: "Aligned vs instruct on held-out prompts (align stage)",
    "reward_model": "Reward model on held-out pairs (reward_model stage)",
    "optimization": "Optimized vs its source, as served (optimize stage)",
    "pretraining": "Held-out bits per byte beside unigram and bigram baselines (pretrain stage)"}


@dataclass
class SuiteResult:
    metrics: dict[str, float]
    samples: list[dict] = field(default_factory=list)
    per_prompt: list[float] = field(default_factory=list)  # reward suites: one score per prompt
    # metric -> one entry per row, in row order: a score (the metric is their mean) or a
    # [numerator, denominator] pair (the metric is sum/sum, through ``shipyard.eval.stats.TRANSFORMS``)
    rows: dict[str, list] = field(default_factory=dict)
