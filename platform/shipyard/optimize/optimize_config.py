"""Typed config of the optimize stage: distill -> prune -> quantize, each optional."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shipyard.models.gguf import GGUF_TYPES
from shipyard.schema import Device, StrictModel

QUANT_METHODS = ("bf16", "dynamic_int8", "int8_weight_only", "int4_weight_only", "bnb_int8", "bnb_nf4")


class QuantizeConfig(StrictModel):
    """Post-training quantization of the weights.

    bf16 (default): every weight in bfloat16, computed in bfloat16: half the size, bits per byte
        within 0.1% on SmolLM2-135M, and faster decoding where the CPU has AVX512-BF16/AMX (or on a GPU).
    dynamic_int8: int8 weights and on-the-fly int8 activations, one scale per tensor (torch, CPU
        kernels). Fast, but it ruins models with massive activations (SmolLM2: down_proj inputs reach
        2,900x the median token's; bits per byte x1.39): never the default, and optimize.json says so.
    int8_weight_only / int4_weight_only: torchao, weights only (int4 in groups of ``group_size``);
        accurate, but torchao's eager CPU kernels decode ~4x slower than float.
    bnb_int8 / bnb_nf4: bitsandbytes, CUDA only.
    """

    method: Literal[QUANT_METHODS] = "bf16"  # type: ignore[valid-type]
    skip_modules: list[str] = Field(["lm_head"], description="Linear layers kept in float (by name suffix).")
    group_size: int = Field(32, gt=0, description="int4_weight_only: weights sharing one scale and zero point.")


class PruneConfig(StrictModel):
    """Magnitude pruning, then an optional short recovery fine-tune on the corpus."""

    kind: Literal["unstructured", "structured"] = Field(
        "unstructured", description="unstructured: zero the smallest weights; structured: remove MLP channels.")
    sparsity: float = Field(gt=0, lt=1, description="Share of weights (or MLP channels) removed.")
    skip_modules: list[str] = Field(["lm_head"], description="unstructured: Linear layers left whole.")
    recover_steps: int = Field(0, ge=0, description="Causal-LM fine-tune steps after pruning (0: none).")
    lr: float = Field(1e-4, gt=0, le=1)
    batch_size: int = Field(8, gt=0)
    seq_len: int = Field(128, gt=8)
    seed: int = 0


class DistillConfig(StrictModel):
    """A shallower student trained on the teacher's soft targets plus the hard next-token labels."""

    student_layers: int = Field(gt=0, description="Blocks the student keeps (evenly spaced teacher blocks).")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the soft targets.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the soft (KL) term; 1 - alpha on the hard CE.")
    steps: int = Field(100, gt=0)
    lr: float = Field(5e-4, gt=0, le=1)
    batch_size: int = Field(8, gt=0)
    seq_len: int = Field(128, gt=8)
    seed: int = 0


GGUF_KINDS = GGUF_TYPES  # what models.gguf can write


class GGUFConfig(StrictModel):
    """Export the final model to GGUF for the llama.cpp engine, with llama.cpp's own tools.

    The float file comes from llama.cpp's convert_hf_to_gguf.py, the quantized ones from it through
    llama_model_quantize (llama-quantize). Each file is measured as served (llama.cpp on the CPU: size,
    ms per token, perplexity) beside the other steps; ``serve`` is the one ``shipyard serve`` picks
    (``--engine auto`` on a CPU) and the one the report's final ratios describe.
    """

    types: list[Literal[GGUF_KINDS]] = Field(["f16", "q8_0", "q4_k_m"], min_length=1)  # type: ignore[valid-type]
    serve: Literal[GGUF_KINDS] = "q8_0"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _served_is_exported(self) -> GGUFConfig:
        if self.serve not in self.types:
            raise ValueError(f"gguf.serve {self.serve!r} must be one of gguf.types {self.types}")
        return self


class OptimizeConfig(StrictModel):
    """Turn the aligned model into the deployable one; every step is measured against the source."""

    distill: DistillConfig | None = None
    prune: PruneConfig | None = None
    quantize: QuantizeConfig | None = QuantizeConfig()
    gguf: GGUFConfig | None = Field(None, description="Also export GGUF files for llama.cpp (after the other steps).")
    report_docs: int = Field(16, gt=0, description="Held-out documents for the perplexity delta of each step.")
    context_length: int = Field(128, gt=8, description="Perplexity window of the report.")
    latency_prompts: int = Field(3, gt=0, description="Prompts timed for ms per new token.")
    latency_tokens: int = Field(16, gt=1, description="New tokens per timed prompt.")
    device: Device = Field(
        "auto", description="Where every step is measured: the final model's device (bitsandbytes: the GPU; "
                            "dynamic_int8 and torchao: the CPU); auto otherwise is a GPU when one is visible.")

    @model_validator(mode="after")
    def _something(self) -> OptimizeConfig:
        if self.distill is None and self.prune is None and self.quantize is None and self.gguf is None:
            raise ValueError("optimize needs at least one of distill, prune, quantize, gguf")
        if self.gguf and self.quantize and self.quantize.method != "bf16":
            raise ValueError(f"gguf converts a float model: quantize.method {self.quantize.method!r} leaves none "
                             "(use bf16, or quantize: null, and let gguf.types quantize)")
        return self
