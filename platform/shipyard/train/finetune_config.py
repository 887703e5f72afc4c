"""FinetuneConfig: instruction fine-tuning (full, LoRA, QLoRA, prompt tuning; one task or a mixture)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shipyard.schema import StrictModel, TrainPrecision


class LoraConfig(StrictModel):
    r: int = Field(8, gt=0, description="LoRA rank (8 is usually enough).")
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(["q_proj", "v_proj"], min_length=1,
                                      description="Attention projections suffice for most tasks.")


class QLoraConfig(StrictModel):
    """The frozen base in 4 bits (bitsandbytes, CUDA only); LoRA adapters train in bf16 on top."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="Quantize the quantization constants too (~0.4 bit/param).")
    compute_dtype: Literal["bfloat16", "float16"] = "bfloat16"


class PromptTuningConfig(StrictModel):
    """Soft prompt: trainable virtual-token embeddings before every input; the model stays frozen."""

    num_virtual_tokens: int = Field(20, ge=1, le=512, description="20-100 is the usual range.")
    init_text: str | None = Field(None, description="Initialise from this text's embeddings (else random).")


class TaskConfig(StrictModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Also the adapter's name.")
    train: str = Field(description="JSONL: {instruction, input?, response} or {messages: [{role, content}...]}.")
    weight: float = Field(1.0, gt=0, description="Share of the mixture, relative to the other tasks.")
    max_examples: int | None = Field(None, gt=0)


class ForgettingConfig(StrictModel):
    """Catastrophic-forgetting check: the base task's held-out perplexity before and after tuning."""

    heldout_text: str | None = Field(None, description="JSONL of {text}: the base (pretraining) task's held-out set.")
    max_docs: int = Field(64, gt=0)
    max_ratio: float | None = Field(
        None, gt=1, description="Fail the stage when perplexity after / before exceeds this (None: only log).")


class FinetuneConfig(StrictModel):
    """Instruction fine-tuning (loss on response tokens only) with TRL's SFTTrainer."""

    train: str | None = Field(None, description="One task's JSONL (shorthand for tasks: [{name: default, ...}]).")
    tasks: list[TaskConfig] = Field(default_factory=list, description="Several tasks mixed by weight.")
    adapters: Literal["mixture", "per_task"] = Field(
        "mixture", description="mixture: one adapter on the weighted mix; per_task: one adapter per task.")
    method: Literal["full", "lora", "qlora", "prompt_tuning"] = "lora"
    lora: LoraConfig = LoraConfig()
    qlora: QLoraConfig = QLoraConfig()
    prompt_tuning: PromptTuningConfig = PromptTuningConfig()
    merge: bool = Field(True, description="Write base + adapter merged (LoRA/QLoRA); the adapters are kept too.")
    forgetting: ForgettingConfig = ForgettingConfig()
    max_length: int = Field(256, gt=8, description="Prompt + response tokens; longer rows are truncated.")
    batch_size: int = Field(8, gt=0)
    max_steps: int = Field(100, gt=0, description="Optimizer steps (per adapter with per_task).")
    lr: float = Field(1e-3, gt=0, le=1)
    max_examples: int | None = Field(None, gt=0, description="Cap on the mixed training rows.")
    eval_examples: int = Field(64, gt=0, description="Held-out rows per task for eval loss (5% of rows, at most this).")
    seed: int = 0
    precision: TrainPrecision = "auto"

    @model_validator(mode="after")
    def _tasks(self) -> FinetuneConfig:
        if (self.train is None) == (not self.tasks):
            raise ValueError("set either train (one task) or tasks (a mixture), not both and not neither")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique: {names}")
        if self.adapters == "per_task" and self.method in ("full",):
            raise ValueError("adapters: per_task needs a PEFT method (lora, qlora, prompt_tuning), not full")
        return self

    def task_list(self) -> list[TaskConfig]:
        if self.tasks:
            return list(self.tasks)
        return [TaskConfig(name="default", train=self.train, max_examples=self.max_examples)]
