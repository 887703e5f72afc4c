"""The critique_revise stage's config (``shipyard.train.critique_revise``): prompts and the constitution."""

from __future__ import annotations

from pydantic import Field

from shipyard.schema import StrictModel


class Principle(StrictModel):
    """One principle: how to critique an answer against it, and how to revise the answer."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    critique: str = Field(min_length=1, description="Critique request, e.g. 'Point out anything rude in your answer.'")
    revision: str = Field(min_length=1, description="Revision request, e.g. 'Rewrite your answer without it.'")


class CritiqueReviseConfig(StrictModel):
    """The ``critique_revise:`` section: prompts, the constitution and generation budget."""

    prompts: str = Field(description="JSONL of prompt rows ({prompt}) or preference rows; their prompts are used.")
    constitution: list[Principle] = Field(min_length=1, description="The principles; each round draws one.")
    rounds: int = Field(1, ge=1, le=8, description="Critique-revise rounds per prompt.")
    max_examples: int = Field(32, gt=0)
    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(0.7, ge=0, le=5, description="Sampling temperature (0: greedy).")
    seed: int = 0
