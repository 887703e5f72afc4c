"""The pipeline profile: ``PipelineConfig`` assembles the stages' typed configs and checks them together.

    shipyard config validate pipelines/configs/tiny-cpu.yaml

Each stage's config lives beside the stage (``<stage>_config.py``, TRL's convention; the table is in
``shipyard.stages``); parsing is ``shipyard.schema``'s. Every config rejects unknown keys, wrong types and
impossible values at load time, and the error names the file, the line and the dotted key
(``tiny-cpu.yaml:14: pretrain.lr: ...``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import ConfigDict, Field, model_validator

from shipyard.data.data_filter_config import DataFilterConfig
from shipyard.data.train_tokenizer_config import TokenizerConfig
from shipyard.eval.evaluate_config import EvalSpec, prompt_is_file
from shipyard.features.rag_index_config import RagIndexConfig
from shipyard.kube.cluster_config import ClusterConfig
from shipyard.models.select_config import BaseModelConfig
from shipyard.optimize.optimize_config import OptimizeConfig
from shipyard.schema import ConfigError, StrictModel, config_to_json, parse_config, read_config_file
from shipyard.serving.serve_config import ServeConfig
from shipyard.tracking.register_config import RegisterConfig
from shipyard.train.align_config import ALIGNMENT_KEYS, AlignConfig
from shipyard.train.critique_revise_config import CritiqueReviseConfig
from shipyard.train.finetune_config import FinetuneConfig
from shipyard.train.pretrain_config import PretrainConfig
from shipyard.train.reward_model_config import RewardModelConfig

# The models the lifecycle's evaluate stage measures (champion: the registered one, when there is one).
EVAL_MODELS = ("base", "finetuned", "aligned", "optimized", "champion")
EVAL_ALIGNMENT = "alignment"
# The eval table's rows that are not models: what a stage measured itself (``shipyard.eval.evaluate.STAGE_ROWS``).
STAGE_REPORTS = {
    EVAL_ALIGNMENT: ("align", ALIGNMENT_KEYS),
    "reward_model": ("reward_model", ("pairwise_accuracy", "test_pairs")),
    "optimization": ("optimize", ("size_ratio", "latency_ratio", "perplexity_ratio", "tokens_per_s_ratio")),
    "pretraining": ("pretrain", ("val_bpb", "unigram_bpb", "bigram_bpb", "val_tokens")),
}


class PipelineConfig(StrictModel):
    """A pipeline profile: ``pipelines/configs/<name>.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    experiment: str = Field("shipyard", description="MLflow experiment of the parent run.")
    data_filter: DataFilterConfig
    train_tokenizer: TokenizerConfig = TokenizerConfig()
    base: BaseModelConfig = BaseModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig
    reward_model: RewardModelConfig
    align: AlignConfig
    critique_revise: CritiqueReviseConfig | None = None
    optimize: OptimizeConfig = OptimizeConfig()
    evaluate: EvalSpec
    # "register" would shadow BaseModel.register (ABCMeta), hence the alias.
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    serve: ServeConfig = ServeConfig()
    rag: RagIndexConfig | None = Field(None, description="Documents indexed for RAG; the registered model "
                                                         "version is pinned to the index version.")
    cluster: ClusterConfig = Field(ClusterConfig(), description="Kubernetes placement, secrets and deploy "
                                                                "(shipyard.kube.cluster_config); kfp.local ignores it.")

    @model_validator(mode="after")
    def _cross_stage(self) -> PipelineConfig:
        if self.pretrain.objective != "clm":
            raise ValueError(f"pretrain.objective {self.pretrain.objective!r}: the lifecycle fine-tunes, aligns and "
                             f"serves a causal LM, so it pretrains with objective clm (llama or gpt2); "
                             f"train mlm and span models with `shipyard pretrain`")
        self._check_gate()
        if self.rag is not None and not self.rag.documents:
            raise ValueError("rag.documents: the lifecycle's rag_index step needs the documents to index")
        rag_suites = [i for i, s in enumerate(self.evaluate.suites) if s.kind == "rag"]
        if rag_suites and self.rag is None:
            raise ValueError(f"evaluate.suites.{rag_suites[0]} (kind rag) searches the index the rag: section "
                             f"builds, and this profile has no rag: section")
        if self.align.eval_prompts is None and not self.evaluate.of_kind("reward"):
            raise ValueError("align.eval_prompts is not set and evaluate has no reward suite to take prompts from")
        if self.base.type != "pretrain":  # a selected model brings its own context; finetune checks it
            return self
        ctx = self.pretrain.context_length
        for stage in ("finetune", "reward_model", "align"):
            if getattr(self, stage).max_length > ctx:
                raise ValueError(f"{stage}.max_length ({getattr(self, stage).max_length}) exceeds "
                                 f"pretrain.context_length ({ctx})")
        for name, step in (("distill", self.optimize.distill), ("prune", self.optimize.prune)):
            if step is not None and step.seq_len > ctx:
                raise ValueError(f"optimize.{name}.seq_len ({step.seq_len}) exceeds pretrain.context_length ({ctx})")
        if self.evaluate.context_length > ctx:
            raise ValueError(f"evaluate.context_length ({self.evaluate.context_length}) exceeds "
                             f"pretrain.context_length ({ctx})")
        if self.pretrain.context_length > self.train_tokenizer.model_max_length:
            raise ValueError("pretrain.context_length exceeds train_tokenizer.model_max_length")
        return self

    def _check_gate(self) -> None:
        for i, check in enumerate(self.register_.gate):
            for j, metric in enumerate([check.metric, *check.vs]):
                where = f"register.gate.{i}." + ("metric" if j == 0 else f"vs.{j - 1}")
                self._check_gate_metric(where, metric)

    def _check_gate_metric(self, where: str, metric: str) -> None:
        row, _, name = metric.partition(".")
        if row in STAGE_REPORTS:
            stage, keys = STAGE_REPORTS[row]
            if name not in keys:
                raise ValueError(f"{where}: {metric!r}: the {stage} stage reports {', '.join(keys)}")
            return
        try:
            self.evaluate.check_metric(metric, EVAL_MODELS)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def align_eval_prompts(self) -> str:
        """The align stage's held-out prompts: its own, else the first reward suite's."""
        return self.align.eval_prompts or self.evaluate.of_kind("reward")[0].data

    def data_paths(self) -> dict[str, str]:
        """Every input path of the profile, by dotted key."""
        return {
            "data_filter.input": self.data_filter.input,
            **({"base.path": self.base.path} if self.base.path else {}),
            **({"finetune.train": self.finetune.train} if self.finetune.train else {}),
            **{f"finetune.tasks.{i}.train": t.train for i, t in enumerate(self.finetune.tasks)},
            **({"finetune.forgetting.heldout_text": self.finetune.forgetting.heldout_text}
               if self.finetune.forgetting.heldout_text else {}),
            "reward_model.train": self.reward_model.train,
            "reward_model.test": self.reward_model.test,
            "align.train": self.align.train,
            **({"align.eval_prompts": self.align.eval_prompts} if self.align.eval_prompts else {}),
            **({"critique_revise.prompts": self.critique_revise.prompts} if self.critique_revise else {}),
            **self.evaluate.data_paths(),
            **({"rag.documents": self.rag.documents} if self.rag and self.rag.documents else {}),
            **({"serve.app_prompt": self.serve.app_prompt} if prompt_is_file(self.serve.app_prompt) else {}),
        }

    def with_absolute_paths(self, base: Path, source: str = "<config>") -> PipelineConfig:
        """Resolve relative data paths against ``base`` and check that each exists."""
        data = self.model_dump(by_alias=True)
        for key, value in self.data_paths().items():
            path = Path(value) if Path(value).is_absolute() else (base / value)
            if not path.exists():
                raise ConfigError(f"{source}: {key}: path does not exist: {value} (resolved to {path})")
            *parents, field = key.split(".")
            node = data
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            node[field] = str(path.resolve())
        return PipelineConfig.model_validate(data)

    def digest(self) -> str:
        """sha256 of the canonical JSON: the config hash recorded in lineage tags."""
        return hashlib.sha256(config_to_json(self).encode()).hexdigest()


def load_pipeline_config(path: str | Path, resolve_paths: bool = True) -> PipelineConfig:
    """Load a pipeline profile; relative data paths resolve against the current directory."""
    cfg = parse_config(PipelineConfig, read_config_file(path), str(path))
    return cfg.with_absolute_paths(Path.cwd(), str(path)) if resolve_paths else cfg
