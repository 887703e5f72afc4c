"""What scores a completion during RL and alignment evaluation.

A reward is a weighted sum of terms, each a function ``(prompts, completions) -> list[float]``:

- ``reward_model``: the trained pairwise reward model's logit for prompt + completion;
- ``non_toxic``: the toxicity classifier shipped in ``alt-profanity-check``, as the log-odds of
  "not toxic" (the seeds' "not hate" logit), so a clean text scores high and an abusive one low;
- ``keywords``: occurrences of given words per completion word (a simple, known reward for tests
  and format shaping);
- ``sentiment``: vaderSentiment's compound score of the completion (-1 to 1), the rater whose
  scale the demo's preference labels come from: a judge for sentiment steering that the policy
  never optimized against.

PPO sums the terms into one scalar; GRPO gets them as TRL's list of reward functions with weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from shipyard.schema import StrictModel

RewardFn = Callable[[list[str], list[str]], list[float]]


class RewardTerm(StrictModel):
    """One reward term; the total reward is the weighted sum of the terms."""

    kind: Literal["reward_model", "non_toxic", "keywords", "sentiment"] = Field(
        "reward_model", description="reward_model: the trained reward model (the align stage's input); "
        "non_toxic: log-odds of not-toxic from alt-profanity-check; keywords: share of completion words "
        "that are in `keywords`; sentiment: vaderSentiment's compound score of the completion.")
    weight: float = Field(1.0, description="Multiplier of this term in the sum.")
    keywords: list[str] = Field(default_factory=list, description="Words rewarded by kind keywords.")

    @model_validator(mode="after")
    def _keywords(self) -> RewardTerm:
        if (self.kind == "keywords") != bool(self.keywords):
            raise ValueError("keywords: set exactly when kind is keywords")
        return self


def toxicity_probability(texts: list[str]) -> list[float]:
    """Probability that each text is toxic (alt-profanity-check's calibrated linear model)."""
    from profanity_check import predict_prob

    return [float(p) for p in predict_prob(list(texts))] if texts else []


def non_toxic_logit(texts: list[str]) -> list[float]:
    """log(P(not toxic) / P(toxic)), with P clipped to [1e-6, 1 - 1e-6] (so within +-13.8)."""
    out = []
    for p in toxicity_probability(texts):
        p = min(max(p, 1e-6), 1 - 1e-6)
        out.append(math.log((1 - p) / p))
    return out


def sentiment_compound(texts: list[str]) -> list[float]:
    """vaderSentiment's compound polarity of each text, -1 (negative) to 1 (positive); 0 when neutral."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = _vader(SentimentIntensityAnalyzer)
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


_VADER: list = []


def _vader(cls):
    if not _VADER:  # its lexicon takes 0.1 s to read: once per process
        _VADER.append(cls())
    return _VADER[0]


def keyword_share(completions: list[str], keywords: list[str]) -> list[float]:
    words = {k.lower() for k in keywords}
    out = []
    for text in completions:
        tokens = re.findall(r"\w+", text.lower())
        out.append(sum(t in words for t in tokens) / max(len(tokens), 1))
    return out


class RewardModelScorer:
    """The reward model's logit of prompt + completion (the text layout it was trained on), computed
    on ``device`` (``shipyard.models.device``; auto: the GPU the policy samples on, when there is one)."""

    def __init__(self, model_dir: str | Path, max_length: int, device: str = "auto"):
        from shipyard.models.causal_lm import load_tokenizer
        from shipyard.models.device import inference_device, place
        from shipyard.train.reward_model import load_reward_model

        self.device = inference_device(device, model_dir)
        self.model, self.tokenizer = place(load_reward_model(model_dir), self.device), load_tokenizer(model_dir)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.max_length = max_length

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        from shipyard.train.reward_model import score_texts

        return score_texts(self.model, self.tokenizer, [p + c for p, c in zip(prompts, completions, strict=True)],
                           self.max_length)


def term_function(term: RewardTerm, reward_model_dir: str | Path | None, max_length: int) -> RewardFn:
    if term.kind == "reward_model":
        if reward_model_dir is None:
            raise ValueError("align.rewards has a reward_model term but the stage got no reward model")
        return RewardModelScorer(reward_model_dir, max_length)
    if term.kind == "non_toxic":
        return lambda prompts, completions: non_toxic_logit(completions)
    if term.kind == "sentiment":
        return lambda prompts, completions: sentiment_compound(completions)
    return lambda prompts, completions: keyword_share(completions, term.keywords)


def reward_functions(terms: list[RewardTerm], reward_model_dir: str | Path | None,
                     max_length: int) -> list[tuple[RewardTerm, RewardFn]]:
    """Each term with its function, built once (a reward model is loaded once for all its uses)."""
    return [(t, term_function(t, reward_model_dir, max_length)) for t in terms]


def weighted_sum(functions: list[tuple[RewardTerm, RewardFn]]) -> RewardFn:
    """The terms' weighted sum as one function."""

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        total = [0.0] * len(prompts)
        for term, fn in functions:
            for i, v in enumerate(fn(prompts, completions)):
                total[i] += term.weight * v
        return total

    return reward


def build_reward(terms: list[RewardTerm], reward_model_dir: str | Path | None, max_length: int) -> RewardFn:
    """The weighted sum of ``terms`` as one function."""
    return weighted_sum(reward_functions(terms, reward_model_dir, max_length))


def trl_reward_functions(functions: list[tuple[RewardTerm, RewardFn]]) -> tuple[list[Callable], list[float]]:
    """The terms as TRL reward functions ``f(prompts, completions, **kwargs)`` and their weights."""
    funcs = []
    for term, fn in functions:

        def trl_fn(prompts, completions, _fn=fn, **kwargs):
            return _fn(list(prompts), list(completions))

        trl_fn.__name__ = term.kind
        funcs.append(trl_fn)
    return funcs, [t.weight for t, _ in functions]
