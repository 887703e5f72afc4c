"""The profile's ``serve:`` section: what the registered model is served with by default."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shipyard.schema import StrictModel


class ServeConfig(StrictModel):
    max_new_tokens: int = Field(64, gt=0, description="Default max_tokens for requests that set none.")
    engine: Literal["auto", "transformers", "llamacpp"] = Field(
        "auto", description="What decodes (shipyard serve --engine): auto picks llama.cpp for a model with a GGUF "
                            "export (optimize.gguf) on a CPU, transformers otherwise.")
    app_prompt: str | None = Field(
        None, description="The fewshot app's prompt (shipyard serve --app-prompt): a PromptSpec YAML file, or "
                          "NAME@ALIAS in MLflow's prompt registry.")
