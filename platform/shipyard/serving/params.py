"""What one generation asks for and what it gives back: the engine's request and result types."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    adapter: str | None = None  # a LoRA adapter served under its own model name; None = the base
    logprobs: int | None = None  # None: none; k >= 0: each token's logprob and the k most likely alternatives
    prompt_logprobs: bool = False  # also score the prompt's tokens (completions' echo)
    grammar: str | None = None  # llguidance grammar the output must follow (response_format; serving.constrain)


@dataclass
class TokenLogprob:
    token: int
    logprob: float | None  # None for a prompt's first token (nothing precedes it)
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # one per completion token, when asked
    prompt_logprobs: list[TokenLogprob] | None = None  # one per prompt token, when asked
    prompt_ids: list[int] = field(default_factory=list)
