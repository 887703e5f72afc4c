"""Choosing one row's next token from its logits, with OpenAI's sampling settings, and its log-probabilities.

Order (as transformers' ``generate``): CTRL's repetition penalty over prompt and completion, OpenAI's
frequency/presence penalties over the completion, then temperature, top-k and top-p. Temperature 0
(or below ``GREEDY_BELOW``, where dividing by it overflows) is greedy. Log-probabilities are the
model's own (log-softmax of the raw logits, before any of these), as vLLM and lm-evaluation-harness's
``hf`` backend report them. Any setting the schema accepts gives a token: when the settings leave no
finite probability (an extreme penalty), the row falls back to the greedy choice of what is left.
"""

from __future__ import annotations

from dataclasses import dataclass

GREEDY_BELOW = 1e-4
SEED_MODULUS = 2**63  # torch.Generator seeds are 64-bit; any integer a client sends maps into range


@dataclass
class TokenChoice:
    token: int
    logprob: float  # the model's, of the chosen token
    top: list[tuple[int, float]]  # the k most likely tokens and their logprobs (k = the request's top_logprobs)


def generator_for(seed: int | None, device):
    """A private RNG for a seeded row (its sample does not depend on other requests' draws); None = torch's."""
    import torch

    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed % SEED_MODULUS)


def penalized(scores, p, prompt_ids, generated_ids):
    """Scores after the repetition, frequency and presence penalties (``scores`` is not changed)."""
    import torch

    scores = scores.clone()
    if p.repetition_penalty != 1.0:
        seen = torch.cat([prompt_ids, generated_ids]).unique()
        s = scores[seen]
        scores[seen] = torch.where(s > 0, s / p.repetition_penalty, s * p.repetition_penalty)
    if (p.frequency_penalty or p.presence_penalty) and generated_ids.numel():
        counts = torch.bincount(generated_ids, minlength=scores.shape[0])[: scores.shape[0]].to(scores.dtype)
        scores -= counts * p.frequency_penalty + (counts > 0).to(scores.dtype) * p.presence_penalty
    return scores


def filtered(scores, p):
    """Temperature, then top-k, then top-p (nucleus: the smallest set whose probability reaches top_p)."""
    import torch

    scores = scores / p.temperature
    if p.top_k and p.top_k < scores.shape[0]:
        kth = torch.topk(scores, p.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if p.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        drop = (probs.cumsum(-1) - probs) >= p.top_p  # the first token is always kept
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return scores


def choose(logits, p, prompt_ids, generated_ids, generator, top_logprobs: int = 0) -> TokenChoice:
    """The next token of one row from its float ``logits`` [vocab]."""
    import torch

    scores = penalized(logits, p, prompt_ids, generated_ids) if _penalizes(p) else logits
    if p.temperature < GREEDY_BELOW:
        token = int(torch.nan_to_num(scores, nan=float("-inf")).argmax())
    else:
        probs = torch.softmax(filtered(scores.double(), p), dim=-1)
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
            token = int(torch.nan_to_num(scores, nan=float("-inf")).argmax())
        else:
            token = int(torch.multinomial(probs, 1, generator=generator))
    return logprobs_of(logits, token, top_logprobs)


def logprobs_of(logits, token: int, top: int) -> TokenChoice:
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logp, top) if top else None
    pairs = [(t, v) for t, v in zip(best.indices.tolist(), best.values.tolist(), strict=True)
             if v > float("-inf")] if best is not None else []  # a token no row can take is no alternative
    return TokenChoice(token, float(logp[token]), pairs)


def _penalizes(p) -> bool:
    return p.repetition_penalty != 1.0 or bool(p.frequency_penalty) or bool(p.presence_penalty)
