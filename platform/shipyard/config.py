"""Typed stage configs, shared by the CLI, the KFP components, the pipelines and the tests.

    shipyard config validate pipelines/configs/tiny-cpu.yaml

Every config rejects unknown keys, wrong types and impossible values at load time, and the error
names the file, the line and the dotted key (``tiny-cpu.yaml:14: pretrain.lr: ...``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


from shipyard.data.filter_config import DataFilterConfig
from shipyard.eval.spec import EvalSpec
from shipyard.features.config import RagIndexConfig
from shipyard.kube.cluster import ClusterConfig
from shipyard.optimize.config import OptimizeConfig, QuantizeConfig  # noqa: F401  (re-exported)
from shipyard.schema import ConfigError, StrictModel  # re-exported: callers import them from here
from shipyard.models.select import BaseModelConfig  # noqa: F401  (re-exported)
from shipyard.train.align_config import ALIGNMENT_KEYS, AlignConfig  # noqa: F401  (re-exported)
from shipyard.train.critique_revise import CritiqueReviseConfig  # noqa: F401  (re-exported)
from shipyard.train.finetune_config import FinetuneConfig, LoraConfig  # noqa: F401  (re-exported)
from shipyard.train.pretrain_config import PretrainConfig  # noqa: F401  (re-exported)


# ---------------------------------------------------------------------------------------------
# Stage configs (one per stage; the stage function takes exactly this)
# ---------------------------------------------------------------------------------------------


class TokenizerConfig(StrictModel):
    """Tokenizer trained on the clean corpus (``tokenizers``), saved as a transformers tokenizer."""

    kind: Literal["bpe", "wordpiece", "unigram"] = Field(
        "bpe", description="bpe: byte-level BPE (GPT); wordpiece: BERT; unigram: SentencePiece/T5.")
    vocab_size: int = Field(4096, ge=300, le=1_000_000, description="Target vocabulary size.")
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency for a merge (bpe, wordpiece).")
    model_max_length: int = Field(512, gt=0, description="Context length recorded in the tokenizer.")
    lowercase: bool = Field(False, description="Lowercase before tokenizing (wordpiece, unigram).")
    extra_ids: int = Field(0, ge=0, le=1000, description="Sentinel tokens <extra_id_N> (T5 span corruption).")
    heldout_every: int = Field(50, ge=0, description="Hold out every N-th document for the stats (0: none).")
    stats_docs: int = Field(500, gt=0, description="Held-out documents the stats are measured on.")


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


class ServeConfig(StrictModel):
    max_new_tokens: int = Field(64, gt=0, description="Default max_tokens for requests that set none.")


# The models the lifecycle's evaluate stage measures (champion: the registered one, when there is one).
EVAL_MODELS = ("base", "finetuned", "aligned", "optimized", "champion")
EVAL_ALIGNMENT = "alignment"


class PretrainSection(BaseModel):
    """The ``pretrain:`` section of a YAML file on its own (``shipyard pretrain``); other sections are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    pretrain: PretrainConfig


class OptimizeSection(BaseModel):
    """The ``optimize:`` section of a YAML file on its own (``shipyard optimize``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    optimize: OptimizeConfig


class CritiqueReviseSection(BaseModel):
    """The ``critique_revise:`` section of a YAML file on its own (``shipyard critique-revise``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    critique_revise: CritiqueReviseConfig


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
                                                                "(shipyard.kube.cluster); kfp.local ignores it.")

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
            if check.metric.startswith(EVAL_ALIGNMENT + "."):
                name = check.metric.split(".", 1)[1]
                if name not in ALIGNMENT_KEYS:
                    raise ValueError(f"register.gate.{i}.metric: {check.metric!r}: the align stage reports "
                                     f"{', '.join(ALIGNMENT_KEYS)}")
                continue
            try:
                self.evaluate.check_metric(check.metric, EVAL_MODELS)
            except ValueError as exc:
                raise ValueError(f"register.gate.{i}.metric: {exc}") from None

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


# ---------------------------------------------------------------------------------------------
# Loading with errors that name file, line and key
# ---------------------------------------------------------------------------------------------


def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path of a YAML document to its 1-based line number."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            lines.update(_key_lines(item, prefix + (i,)))
    return lines


def _format_errors(exc: ValidationError, source: str, lines: dict[tuple, int]) -> str:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "union_tag_invalid":  # point at the discriminator's own line (kind: ...)
            loc = loc + (err["ctx"]["discriminator"].strip("'"),)
        # The nearest enclosing key that exists in the file gives the line.
        line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
        key = ".".join(str(p) for p in loc) or "<root>"
        where = f"{source}:{line}" if line else source
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        out.append(f"{where}: {key}: {msg}")
    return "invalid config:\n  " + "\n  ".join(out)


def parse_config(model: type[BaseModel], text: str, source: str = "<string>") -> Any:
    """Parse YAML (or JSON) text into ``model``; raise ConfigError naming source, line and key."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, _key_lines(node) if node else {})) from None


def load_pipeline_config(path: str | Path, resolve_paths: bool = True) -> PipelineConfig:
    """Load a pipeline profile; relative data paths resolve against the current directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    cfg = parse_config(PipelineConfig, path.read_text(encoding="utf-8"), str(path))
    return cfg.with_absolute_paths(Path.cwd(), str(path)) if resolve_paths else cfg


def config_to_json(cfg: BaseModel) -> str:
    return json.dumps(cfg.model_dump(by_alias=True), sort_keys=True)
