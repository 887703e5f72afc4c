"""The register stage's config (``shipyard.tracking.register``): the model name, which output, the gate."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shipyard.schema import StrictModel

METRIC = r"^[a-z_]+(\.[A-Za-z0-9_]+){1,2}$"
PAIRED = ("min_diff", "max_diff", "max_ratio", "min_ratio")
BOUNDS = ("min", "max", "min_ci_low", *PAIRED, "min_vs_champion", "max_vs_champion", "max_ratio_vs_champion")


class GateCheck(StrictModel):
    """One promotion check on ``metric`` (``<model>.<suite>.<metric>``, or ``alignment.<name>``).

    ``min``/``max`` are absolute bounds. The ``*_vs_champion`` bounds compare with the current
    champion measured on the same spec in the same run (the evaluate stage's ``champion`` row):
    ``min_vs_champion: -0.01`` means candidate >= champion - 0.01; ``max_ratio_vs_champion: 1.02``
    means candidate <= 1.02 x champion. With no champion yet they are skipped (and say so).

    Claims need evidence: ``min_ci_low`` and the paired bounds (``vs`` with ``min_diff``/``max_diff``)
    read the evaluate stage's per-row scores and pass only when the 95% bootstrap interval clears
    the bound, so a gain inside the noise of the sample does not pass.
    """

    metric: str = Field(pattern=METRIC)
    stage: str | None = Field(None, pattern=r"^[a-z_]+$", description="The lifecycle stage this check judges: "
                              "it becomes a row of the stage-gain table (input model -> output model).")
    min: float | None = None
    max: float | None = None
    min_ci_low: float | None = Field(None, description="The metric's 95% interval must lie above this "
                                     "(its lower bound > min_ci_low), e.g. a win rate above 0.5.")
    vs: list[str] = Field(default_factory=list, description="Metrics measured on the same rows (the input "
                          "model's), compared paired: metric - vs. A string is a list of one.")
    min_diff: float | None = Field(None, description="With vs: the 95% interval of metric - vs lies above "
                                   "this (0: a gain that is not noise, for a higher-is-better metric).")
    max_diff: float | None = Field(None, description="With vs: the interval lies below this (lower is better).")
    max_ratio: float | None = Field(None, gt=0, description="With vs: metric / vs at most this (point values; "
                                    "a bits-per-byte ratio 1.05 allows 5% worse).")
    min_ratio: float | None = Field(None, gt=0, description="With vs: metric / vs at least this (tokens/s 1.0: "
                                    "at least as fast).")
    min_vs_champion: float | None = None
    max_vs_champion: float | None = None
    max_ratio_vs_champion: float | None = Field(None, gt=0)

    @field_validator("vs", mode="before")
    @classmethod
    def _listed(cls, value):
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_bound(self) -> GateCheck:
        if all(getattr(self, k) is None for k in BOUNDS):
            raise ValueError(f"gate check on {self.metric!r} needs min, max, min_ci_low, a *_diff or max_ratio "
                             f"bound (with vs) or a *_vs_champion bound")
        paired = any(getattr(self, k) is not None for k in PAIRED)
        if paired != bool(self.vs):
            raise ValueError(f"gate check on {self.metric!r}: min_diff, max_diff, max_ratio and min_ratio go with vs "
                             f"(the metrics to compare with), and vs needs one of them")
        bad = [v for v in self.vs if not re.match(METRIC, v)]
        if bad:
            raise ValueError(f"gate check on {self.metric!r}: vs {bad} is not <model>.<suite>.<metric>")
        return self

    def paired(self) -> bool:
        return bool(self.vs)

    def against_champion(self) -> bool:
        return any(v is not None for v in (self.min_vs_champion, self.max_vs_champion, self.max_ratio_vs_champion))


class RegisterConfig(StrictModel):
    """Register the deployable model; move ``champion`` only if every gate check passes."""

    model_name: str = Field("shipyard-tiny", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    model: Literal["optimized", "aligned"] = Field("optimized", description="Which output is deployable.")
    gate: list[GateCheck] = Field(default_factory=list)
