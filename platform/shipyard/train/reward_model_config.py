"""The reward_model stage's config (``shipyard.train.reward_model``)."""

from __future__ import annotations

from pydantic import Field

from shipyard.schema import StrictModel, TrainPrecision


class RewardModelConfig(StrictModel):
    """Pairwise reward model (-log sigmoid(r_chosen - r_rejected)) via TRL's RewardTrainer."""

    train: str = Field(description="JSONL of {prompt, chosen, rejected} rows.")
    test: str = Field(description="Held-out preference pairs for pairwise accuracy.")
    max_length: int = Field(128, gt=8)
    batch_size: int = Field(8, gt=0)
    max_steps: int = Field(60, gt=0)
    lr: float = Field(5e-4, gt=0, le=1)
    max_examples: int | None = Field(None, gt=0)
    seed: int = 0
    precision: TrainPrecision = "auto"
