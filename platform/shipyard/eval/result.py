"""What one eval suite returns: its metrics and a few samples for the report."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SuiteResult:
    metrics: dict[str, float]
    samples: list[dict] = field(default_factory=list)
    per_prompt: list[float] = field(default_factory=list)  # reward suites: one score per prompt
