"""The evaluation spec: suites of held-out checks, the same on a laptop and on a cluster.

    shipyard eval pipelines/configs/tiny-cpu.yaml --model aligned=DIR --reward-model DIR \\
        [--suite NAME] [--rag-index NAME@V]

A spec is the ``evaluate:`` section of a pipeline profile (or a YAML file holding just that
section). Each suite has a ``name``, a ``kind`` and its data; every metric lands in the eval table
as ``<model>.<suite>.<metric>`` (``optimized.heldout.perplexity``), which is also how a gate names
it. Kinds and what they measure:

- perplexity       token-weighted perplexity of held-out text (rolling windows), and bits per
                   byte (bpb), which compares models with different tokenizers
- generation       greedy answers to held-out instructions against references: ROUGE-1/2/L/Lsum
                   (rouge-score), BLEU and chrF (sacrebleu), exact match. Surface overlap is a
                   diagnostic; the report always shows it beside the other suites, never alone.
                   answer_bpb: bits per byte of the reference answer after the prompt (teacher-forced),
                   which copying the input cannot game
- reward           mean reward-model score of greedy continuations of held-out prompts, and the
                   win rate per prompt against the spec's ``baseline`` model (ties count half)
- toxicity         share of greedy continuations the profanity classifier flags above a threshold
- multiple_choice  accuracy on local JSONL ``{query, choices, gold}`` tasks, scored by the
                   log-likelihood of each choice (lm-evaluation-harness's acc and acc_norm)

Generation and multiple-choice suites take ``num_fewshot`` examples from ``fewshot_data`` (the
in-context baseline to beat before fine-tuning). Every metric that is a mean or ratio over rows
carries a 95% bootstrap interval in ``eval_ci.json``; gates compare models paired, on the same rows.
- latency          batch-1 greedy decoding on the model's device: ms per new token, time to first
                   token, tokens/s
- rag              retrieval from the run's RAG index (hit rate, MRR of the expected document) and
                   the reference answer's perplexity with and without the retrieved sources
- app              prompt apps (direct, fewshot, cot, pal, react) on questions with short answers:
                   accuracy, tokens, latency and errors per app, and each app's paired gain over the first
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from shipyard.apps.prompts import is_file_ref as prompt_is_file
from shipyard.schema import Device, StrictModel

SUITE_NAME = r"^[a-z][a-z0-9_]{0,40}$"
GENERATION_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "exact_match", "answer_bpb")


class _Suite(StrictModel):
    name: str = Field(pattern=SUITE_NAME, description="Names the suite's metrics: <model>.<name>.<metric>.")
    max_examples: int | None = Field(None, gt=0, description="Rows used (default: the spec's max_examples).")
    models: list[str] | None = Field(None, min_length=1, description="Only these models run the suite (default: "
                                     "all); e.g. a few-shot baseline measured on the base model alone.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: the suite runs under bf16 autocast "
                                               "(~2.7x faster forward passes where the device has native bf16); "
                                               "every model on the suite shares it, so comparisons stay paired. "
                                               "Keep fp32 where a float model is the reference for a quantized one.")
    METRICS: ClassVar[tuple[str, ...]] = ()

    def metric_names(self) -> tuple[str, ...]:
        return self.METRICS


class PerplexitySuite(_Suite):
    kind: Literal["perplexity"]
    # perplexity_ratio: a model's perplexity over that of the model it was made from
    METRICS: ClassVar[tuple[str, ...]] = ("perplexity", "perplexity_ratio", "bpb", "bpb_ratio")
    data: str = Field(description="JSONL of held-out documents.")
    text_key: str = "text"


class _FewShot(StrictModel):
    num_fewshot: int = Field(0, ge=0, le=32, description="Solved examples put before each question (0: zero-shot).")
    fewshot_data: str | None = Field(None, description="Where the examples come from (the first num_fewshot rows); "
                                     "never the suite's own data, so no test row is shown as an example.")

    @model_validator(mode="after")
    def _fewshot_source(self):
        if self.num_fewshot and not self.fewshot_data:
            raise ValueError(f"num_fewshot={self.num_fewshot} needs fewshot_data (a file other than the test rows)")
        if self.fewshot_data and self.fewshot_data == getattr(self, "data", None):
            raise ValueError("fewshot_data must not be the suite's own data (the examples would be test rows)")
        return self


class GenerationSuite(_Suite, _FewShot):
    kind: Literal["generation"]
    data: str = Field(description="JSONL of instruction rows (instruction/input/response, prompt/completion "
                                  "or messages).")
    metrics: list[Literal[GENERATION_METRICS]] = Field(list(GENERATION_METRICS), min_length=1)  # type: ignore[valid-type]
    max_new_tokens: int | None = Field(None, gt=0)

    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.metrics)


class RewardSuite(_Suite):
    kind: Literal["reward"]
    METRICS: ClassVar[tuple[str, ...]] = ("reward", "win_rate")
    data: str = Field(description="JSONL of prompt rows or preference rows (their prompts are used).")
    max_new_tokens: int | None = Field(None, gt=0)


class ToxicitySuite(_Suite):
    kind: Literal["toxicity"]
    METRICS: ClassVar[tuple[str, ...]] = ("rate", "mean_probability")
    data: str = Field(description="JSONL of prompt rows or preference rows.")
    threshold: float = Field(0.5, gt=0, lt=1, description="Classifier probability above which an answer is toxic.")
    max_new_tokens: int | None = Field(None, gt=0)


class MultipleChoiceSuite(_Suite, _FewShot):
    kind: Literal["multiple_choice"]
    METRICS: ClassVar[tuple[str, ...]] = ("acc", "acc_norm")
    data: str = Field(description="JSONL of {query, choices: [str, ...], gold: index}.")


class LatencySuite(_Suite):
    kind: Literal["latency"]
    METRICS: ClassVar[tuple[str, ...]] = ("ms_per_token", "first_token_ms", "tokens_per_s")
    data: str = Field(description="JSONL of prompt rows, preference rows or instruction rows.")
    max_examples: int | None = Field(4, gt=0)
    max_new_tokens: int = Field(32, gt=0)


class RagSuite(_Suite):
    """Retrieval from the run's RAG index, and how much the retrieved sources help each model.

    hit_rate / mrr: the expected source document among the ``top_k`` retrieved chunks (the same
    search the sidecar serves). answer_perplexity: the reference answer after the question alone;
    answer_perplexity_rag: after the RAG prompt the runtime builds (sources that fit + question);
    context_gain: their ratio (above 1: the model uses its sources).
    """

    kind: Literal["rag"]
    METRICS: ClassVar[tuple[str, ...]] = ("hit_rate", "mrr", "answer_perplexity", "answer_perplexity_rag",
                                          "context_gain")
    data: str = Field(description="JSONL of {question, answer, source}: source is the document id to retrieve.")
    top_k: int = Field(4, gt=0, le=50, description="Chunks retrieved per question.")
    tenant: str = Field("public", description="The tenant whose documents are searched.")


APPS = ("direct", "fewshot", "cot", "pal", "react")
APP_METRICS = ("accuracy", "tokens", "ms", "errors")


class AppSuite(_Suite):
    """Prompt apps (``shipyard.apps.reasoning``) answering questions with short answers, each app on every row.

    Per app: ``<app>_accuracy`` (the answer matches the reference or an alias: numbers by value, text
    by its normalized words), ``<app>_tokens`` (prompt + completion tokens of all the app's model calls),
    ``<app>_ms`` (wall time per answer), ``<app>_errors`` (share that ended without an answer: a spent step
    budget, a program that failed twice), and ``<app>_gain``: accuracy minus the first app's, paired per row,
    so its interval says whether the app beats that baseline.
    """

    kind: Literal["app"]
    data: str = Field(description="JSONL of {question, answer, aliases?: [str], sources?: [doc id]}.")
    apps: list[Literal[APPS]] = Field(["direct", "cot", "pal"], min_length=1,  # type: ignore[valid-type]
                                      description="The apps compared; the first is the baseline of every _gain.")
    prompt: str | None = Field(None, description="The fewshot app's prompt: a PromptSpec YAML file, or NAME@ALIAS "
                                                 "in MLflow's prompt registry (recorded in the run's lineage).")
    k: int | None = Field(None, ge=0, le=64, description="Few-shot examples used (default: all the prompt's).")
    examples: str | None = Field(None, description="fewshot: a JSONL pool of examples ({input, output} or {question, "
                                                   "rationale}) instead of the prompt's; never the suite's data.")
    select: Literal["first", "similar"] = Field("first", description="fewshot: the pool's first k examples, or the k "
                                                "most similar to each question (the RAG embedder, cosine).")
    tools: list[Literal["search", "lookup", "calculate"]] = Field(
        ["calculate"], min_length=1, description="ReAct's tools; search and lookup read the run's RAG index.")
    tenant: str = Field("public", description="The tenant whose documents search reads.")
    top_k: int = Field(1, gt=0, le=10, description="Documents one search returns (the first is shown whole).")
    max_steps: int = Field(5, gt=0, le=20, description="ReAct's step budget.")
    max_new_tokens: int = Field(256, gt=0, description="Tokens per model call.")
    context_length: int = Field(2048, gt=64, description="Prompt budget per call (capped by the model's).")

    @model_validator(mode="after")
    def _consistent(self):
        if len(set(self.apps)) != len(self.apps):
            raise ValueError(f"apps repeats an app: {self.apps}")
        if "fewshot" in self.apps and not self.prompt:
            raise ValueError("the fewshot app needs a prompt (a PromptSpec file or NAME@ALIAS)")
        if self.examples and self.examples == self.data:
            raise ValueError("examples must not be the suite's own data (the answers would be shown)")
        if self.select == "similar" and self.k is None:
            raise ValueError("select: similar needs k (how many of the pool's examples to show)")
        if "lookup" in self.tools and "search" not in self.tools:
            raise ValueError("lookup reads the last search result: add search to tools")
        return self

    def metric_names(self) -> tuple[str, ...]:
        own = tuple(f"{a}_{m}" for a in self.apps for m in APP_METRICS)
        return own + tuple(f"{a}_gain" for a in self.apps[1:])

    @property
    def searches(self) -> bool:
        return "react" in self.apps and "search" in self.tools


Suite = Annotated[PerplexitySuite | GenerationSuite | RewardSuite | ToxicitySuite | MultipleChoiceSuite
                  | LatencySuite | RagSuite | AppSuite, Field(discriminator="kind")]
KINDS = ("perplexity", "generation", "reward", "toxicity", "multiple_choice", "latency", "rag", "app")


class EvalSpec(StrictModel):
    """Which suites every model of a run is measured on (the ``evaluate:`` section)."""

    suites: list[Suite] = Field(min_length=1)
    baseline: str | None = Field(None, pattern=r"^[a-z_]+$",
                                 description="Model the reward suites' win rate is measured against.")
    max_examples: int = Field(40, gt=0, description="Default rows per suite (CPU budget).")
    max_new_tokens: int = Field(24, gt=0, description="Default new tokens per greedy answer.")
    context_length: int = Field(128, gt=8, description="Perplexity window and prompt budget.")
    device: Device = Field(
        "auto", description="Where the models and the reward model run: auto is a GPU when one is visible (a "
                            "quantized model runs where its kernels do). Weights stay float32 on either.")
    engine: Literal["auto", "transformers", "llamacpp"] = Field(
        "auto", description="What decodes each model: auto is llama.cpp for a model directory with a GGUF (optimize's "
                            "gguf export) on the CPU, so it is measured and gated as `shipyard serve` decodes it; "
                            "transformers otherwise. llamacpp fails for a model without a GGUF.")

    @model_validator(mode="after")
    def _unique_names(self) -> EvalSpec:
        names = [s.name for s in self.suites]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"suite names must be unique, repeated: {dup}")
        return self

    def suite(self, name: str):
        for s in self.suites:
            if s.name == name:
                return s
        raise KeyError(f"no suite {name!r} in the spec (suites: {[s.name for s in self.suites]})")

    def only(self, names: list[str]) -> EvalSpec:
        """The spec restricted to ``names`` (each must exist)."""
        picked = [self.suite(n) for n in names]
        return self.model_copy(update={"suites": picked})

    def of_kind(self, kind: str) -> list:
        return [s for s in self.suites if s.kind == kind]

    def data_paths(self, prefix: str = "evaluate") -> dict[str, str]:
        paths = {f"{prefix}.suites.{i}.data": s.data for i, s in enumerate(self.suites)}
        paths.update({f"{prefix}.suites.{i}.fewshot_data": s.fewshot_data for i, s in enumerate(self.suites)
                      if getattr(s, "fewshot_data", None)})
        paths.update({f"{prefix}.suites.{i}.prompt": s.prompt for i, s in enumerate(self.suites)
                      if prompt_is_file(getattr(s, "prompt", None))})
        paths.update({f"{prefix}.suites.{i}.examples": s.examples for i, s in enumerate(self.suites)
                      if getattr(s, "examples", None)})
        return paths

    def runs(self, suite, model: str) -> bool:
        """Whether ``model`` runs ``suite`` (its ``models`` list, when it has one)."""
        return suite.models is None or model in suite.models

    def check_metric(self, metric: str, models: tuple[str, ...]) -> None:
        """Raise ValueError unless ``<model>.<suite>.<metric>`` is something this spec measures."""
        parts = metric.split(".")
        if len(parts) != 3:
            raise ValueError(f"{metric!r}: expected <model>.<suite>.<metric>, e.g. optimized.heldout.perplexity")
        model, suite, name = parts
        if model not in models:
            raise ValueError(f"{metric!r}: unknown model {model!r} (evaluated: {', '.join(models)})")
        try:
            known = self.suite(suite).metric_names()
        except KeyError as exc:
            raise ValueError(f"{metric!r}: {exc.args[0]}") from None
        if name not in known:
            raise ValueError(f"{metric!r}: suite {suite!r} measures {', '.join(known)}; not {name!r}")


def load_eval_spec(path, base=None) -> EvalSpec:
    """A spec from YAML: a profile's ``evaluate:`` section, or a file that is just that section.

    Relative data paths resolve against ``base`` (default: the current directory) and must exist.
    """
    from pathlib import Path

    import yaml

    from shipyard.schema import ConfigError, load_section, parse_config, read_config_file

    path = Path(path)
    text = read_config_file(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, dict) and "evaluate" in data:
        spec = load_section(path, "evaluate", EvalSpec)
    else:
        spec = parse_config(EvalSpec, text, str(path))
    base = Path(base) if base else Path.cwd()
    suites = []
    for i, s in enumerate(spec.suites):
        update = {}
        for key in ("data", "fewshot_data", "prompt", "examples"):
            value = getattr(s, key, None)
            if value is None or (key == "prompt" and not prompt_is_file(value)):
                continue
            resolved = Path(value) if Path(value).is_absolute() else base / value
            if not resolved.exists():
                raise ConfigError(f"{path}: suites.{i}.{key}: path does not exist: {value} (resolved to {resolved})")
            update[key] = str(resolved.resolve())
        suites.append(s.model_copy(update=update))
    return spec.model_copy(update={"suites": suites})
