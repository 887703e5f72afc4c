"""The select stage's config (``base:``): pretrain from scratch, or start from an existing model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shipyard.schema import StrictModel


class BaseModelConfig(StrictModel):
    """Where the lifecycle's base model comes from (the ``pretrain`` step either trains or selects)."""

    type: Literal["pretrain", "local", "mlflow", "smollm2"] = Field(
        "pretrain", description="pretrain: train one from scratch; otherwise select an existing model.")
    path: str | None = Field(None, description="local: a transformers model directory.")
    uri: str | None = Field(None, description="mlflow: models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/path.")

    @model_validator(mode="after")
    def _source(self) -> BaseModelConfig:
        if self.type == "local" and not self.path:
            raise ValueError("base.type local needs base.path")
        if self.type == "mlflow" and not (self.uri and self.uri.split(":/")[0] in ("models", "runs")):
            raise ValueError("base.type mlflow needs base.uri = models:/NAME@ALIAS, models:/NAME/VERSION or runs:/...")
        if self.type in ("pretrain", "smollm2") and (self.path or self.uri):
            raise ValueError(f"base.type {self.type} takes neither path nor uri")
        return self
