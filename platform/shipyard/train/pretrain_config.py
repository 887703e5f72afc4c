"""PretrainConfig: the typed config of the pretrain stage (beside ``pretrain.py``, as TRL does).

Objective and architecture must agree (a causal LM cannot be trained with MLM); the model's size
comes either from explicit dimensions or from a compute budget (Chinchilla sizing, ``sizing.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shipyard.schema import StrictModel

ARCHITECTURES = {"clm": ("llama", "gpt2"), "mlm": ("bert", "roberta"), "span": ("t5",)}
SIZE_FIELDS = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_steps")


class TrainJobConfig(StrictModel):
    """How ``nodes > 1`` runs on Kubernetes: a Kubeflow Trainer v2 TrainJob on a torch runtime."""

    runtime: str = Field("torch-distributed", description="ClusterTrainingRuntime to run on.")
    namespace: str | None = Field(None, description="Default: the namespace this pod runs in.")
    workspace_claim: str | None = Field(
        None, description="ReadWriteMany PVC shared by this pod and the trainer pods (inputs, checkpoints, output).")
    workspace_mount: str = Field("/workspace", description="Where the PVC is mounted, here and in the trainer pods.")
    gpus_per_node: int = Field(0, ge=0, description="nvidia.com/gpu per node (0: CPU training with gloo).")
    cpu: str = Field("4", description="CPU request and limit per node.")
    memory: str = Field("16Gi", description="Memory request and limit per node.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="e.g. a GPU node pool's label.")
    timeout_s: int = Field(7 * 86_400, gt=0, description="activeDeadlineSeconds of the TrainJob.")


class PretrainConfig(StrictModel):
    """A language model trained from scratch on the clean corpus (our loop, nanoGPT-style)."""

    objective: Literal["clm", "mlm", "span"] = Field(
        "clm", description="clm: next token (decoder-only); mlm: masked LM (encoder); span: T5 span corruption.")
    architecture: Literal["llama", "gpt2", "bert", "roberta", "t5"] = Field(
        "llama", description="transformers config family; must fit the objective.")
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(344, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in every block (0 for short pretraining runs).")
    compute_budget_flops: float | None = Field(
        None, gt=0, description="Size the model and max_steps from this budget (Chinchilla: 20 tokens/param); "
        "leave the dimensions and max_steps unset when using it.")
    context_length: int = Field(128, gt=8, description="Training block size in tokens.")
    batch_size: int = Field(16, gt=0, description="Micro-batch per process.")
    grad_accum_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    max_steps: int = Field(200, gt=0, description="Optimizer steps.")
    lr: float = Field(3e-3, gt=0, le=1)
    warmup_steps: int = Field(20, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decays to lr * this at max_steps.")
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    eval_fraction: float = Field(0.02, gt=0, lt=0.5, description="Share of packed blocks held out for val loss.")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="mlm: share of tokens masked (80/10/10).")
    noise_density: float = Field(0.15, gt=0, lt=1, description="span: share of tokens corrupted.")
    mean_span_length: float = Field(3.0, ge=1, description="span: mean corrupted span length.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a CUDA GPU that supports it, fp32 on CPU.")
    compile: bool = Field(False, description="torch.compile the model.")
    log_every: int = Field(10, gt=0, description="Log loss, tokens/s and MFU every N steps.")
    peak_tflops: float | None = Field(
        None, gt=0, description="Device peak for MFU; known GPUs are detected, CPUs need it set.")
    checkpoint_every: int = Field(50, ge=0, description="Checkpoint every N steps (0: only at SIGTERM).")
    keep_checkpoints: int = Field(2, gt=0, description="Newest checkpoints kept.")
    checkpoint_dir: str | None = Field(
        None, description="Where checkpoints go; default: a folder per pipeline run under SHIPYARD_HOME.")
    resume: Literal["auto", "never"] = Field("auto", description="auto: continue from the newest checkpoint.")
    nproc_per_node: int = Field(1, gt=0, description="Processes on this node (torchrun; gloo on CPU).")
    nodes: int = Field(1, gt=0, description=">1 submits a Kubeflow Trainer TrainJob.")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="How processes share the model.")
    trainjob: TrainJobConfig = TrainJobConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:  # noqa: C901
        if self.architecture not in ARCHITECTURES[self.objective]:
            raise ValueError(
                f"objective {self.objective!r} needs architecture in {list(ARCHITECTURES[self.objective])}, "
                f"not {self.architecture!r} (e.g. mlm trains an encoder, not a causal decoder)")
        if self.nodes > 1 and not self.trainjob.workspace_claim:
            raise ValueError("nodes > 1 runs a TrainJob whose pods share data through a PVC: "
                             "set trainjob.workspace_claim")
        if self.compute_budget_flops is not None:
            clash = sorted(set(SIZE_FIELDS) & self.model_fields_set)
            if clash:
                raise ValueError(f"compute_budget_flops sizes the model: do not also set {clash}")
            return self
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < max_steps ({self.max_steps})")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum_steps * self.nproc_per_node * self.nodes * self.context_length

    def sized(self) -> PretrainConfig:
        """This config with dimensions and max_steps chosen from ``compute_budget_flops`` (if set)."""
        if self.compute_budget_flops is None:
            return self
        from shipyard.train.sizing import chinchilla_shape

        shape = chinchilla_shape(self.compute_budget_flops, self.tokens_per_step)
        data = self.model_dump()
        data.update(shape, compute_budget_flops=None)
        data["warmup_steps"] = min(self.warmup_steps, max(shape["max_steps"] // 10, 0))
        return PretrainConfig.model_validate(data)
