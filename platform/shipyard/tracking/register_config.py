"""The register stage's config (``shipyard.tracking.register``): the model name, which output, the gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shipyard.schema import StrictModel


class GateCheck(StrictModel):
    """One promotion check on ``metric`` (``<model>.<suite>.<metric>``, or ``alignment.<name>``).

    ``min``/``max`` are absolute bounds. The ``*_vs_champion`` bounds compare with the current
    champion measured on the same spec in the same run (the evaluate stage's ``champion`` row):
    ``min_vs_champion: -0.01`` means candidate >= champion - 0.01; ``max_ratio_vs_champion: 1.02``
    means candidate <= 1.02 x champion. With no champion yet they are skipped (and say so).
    """

    metric: str = Field(pattern=r"^[a-z_]+(\.[A-Za-z0-9_]+){1,2}$")
    min: float | None = None
    max: float | None = None
    min_vs_champion: float | None = None
    max_vs_champion: float | None = None
    max_ratio_vs_champion: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_bound(self) -> GateCheck:
        if all(getattr(self, k) is None for k in ("min", "max", "min_vs_champion", "max_vs_champion",
                                                   "max_ratio_vs_champion")):
            raise ValueError(f"gate check on {self.metric!r} needs min, max or a *_vs_champion bound")
        return self

    def against_champion(self) -> bool:
        return any(v is not None for v in (self.min_vs_champion, self.max_vs_champion, self.max_ratio_vs_champion))


class RegisterConfig(StrictModel):
    """Register the deployable model; move ``champion`` only if every gate check passes."""

    model_name: str = Field("shipyard-tiny", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    model: Literal["optimized", "aligned"] = Field("optimized", description="Which output is deployable.")
    gate: list[GateCheck] = Field(default_factory=list)
