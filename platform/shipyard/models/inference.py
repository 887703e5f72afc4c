"""Inference helpers every stage shares: batched generation, log-probabilities, perplexity, latency.

They sit with the model loaders (layer L1) because training (forgetting checks, PPO samples), optimize
(each step measured), evaluation and serving all call them. Each takes a transformers model or a GGUF as
llama.cpp serves it (``models.gguf_model.GGUFModel``: ``is_gguf``), which its own functions measure alike.
"""

from __future__ import annotations

import math


def model_device(model):
    """Where the model's weights live (a bitsandbytes model is on CUDA): inputs go there."""
    return next(model.parameters()).device


def text_nll(model, tokenizer, texts: list[str], context_length: int) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, tokens scored) of each text.

    As lm-evaluation-harness's rolling log-likelihood: the text follows the tokenizer's BOS (else
    EOS) token, so its first token is scored too, and windows of ``context_length`` overlap by
    one token, so every token is scored exactly once.
    """
    if getattr(model, "is_gguf", False):
        from shipyard.models import gguf_model

        return gguf_model.text_nll(model, tokenizer, texts, context_length)
    import torch

    device = model_device(model)
    prefix = next((t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None), None)
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            ids = ([prefix] if prefix is not None else []) + ids
            nll, count = 0.0, 0
            for i in range(0, max(len(ids) - 1, 0), context_length - 1):
                window = torch.tensor([ids[i : i + context_length]], device=device)
                if window.shape[1] < 2:
                    continue
                n = window.shape[1] - 1
                nll += model(input_ids=window, labels=window).loss.item() * n
                count += n
            out.append((nll, count))
    return out


def perplexity(model, tokenizer, texts: list[str], context_length: int) -> float:
    """Token-weighted perplexity over ``texts`` (``text_nll``)."""
    scored = text_nll(model, tokenizer, texts, context_length)
    nll, count = sum(n for n, _ in scored), sum(c for _, c in scored)
    if count == 0:
        raise ValueError("no tokens to score for perplexity")
    return math.exp(nll / count)


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, stop: list[str] | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), decoded without special tokens.

    ``temperature`` > 0 samples instead, with optional ``top_k``/``top_p`` (seed torch to reproduce).
    ``stop``: a row ends at the first of these strings, which is not part of its answer.

    Prompts longer than the model's context minus ``max_new_tokens`` keep their end (where the
    instruction template puts the response header).
    """
    if getattr(model, "is_gguf", False):
        from shipyard.models import gguf_model

        if temperature:
            raise ValueError(f"{model.path.name}: sampled generation from a GGUF runs in the server (shipyard "
                             "serve --engine llamacpp); measurements decode it greedily")
        return [cut(t, stop) for t in gguf_model.generate(model, tokenizer, prompts, max_new_tokens, stop)]
    import torch

    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    room = model.config.max_position_embeddings - max_new_tokens
    if room < 8:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room in a {room + max_new_tokens}-token context")
    outputs: list[str] = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False, truncation=True, max_length=room).to(model_device(model))
            sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or None,
                        "top_p": top_p} if temperature else {"do_sample": False}
            stops = {"stop_strings": stop, "tokenizer": tokenizer} if stop else {}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, **sampling, **stops,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            outputs.extend(cut(t, stop).strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs


def cut(text: str, stop: list[str] | None) -> str:
    """``text`` up to the first of the ``stop`` strings."""
    ends = [i for i in (text.find(s) for s in stop or () if s) if i >= 0]
    return (text[:min(ends)] if ends else text).strip()


def choice_logprobs(model, tokenizer, query: str, choices: list[str]) -> list[float]:
    """Summed log-probability of each choice as the continuation of ``query``.

    As lm-evaluation-harness: the pair is tokenized whole and the continuation is what follows
    the query's tokens, so a merge across the boundary is scored with the continuation.
    """
    return [lp for lp, _ in continuation_logprobs(model, tokenizer, query, choices)]


def continuation_logprobs(model, tokenizer, query: str, choices: list[str]) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each choice as the continuation of ``query``."""
    return score_continuations(model, tokenizer, [(query, c) for c in choices])


def score_continuations(model, tokenizer, pairs: list[tuple[str, str]], max_batch_tokens: int = 4096,
                        min_shared: int = 8) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each ``(query, continuation)`` pair, in order.

    Batched (right padding, rows of like length together, at most ``max_batch_tokens`` per batch),
    the vocabulary projection only where a continuation token is scored, and the token prefix every
    pair shares (a system prompt, few-shot examples) run once: its key/value cache is reused for
    every batch, so a 3-shot suite costs little more than a zero-shot one. Exact up to float rounding.
    """
    room = model.config.max_position_embeddings
    tokenized = [tokenized_pair(tokenizer, q, c, room) for q, c in pairs]
    if getattr(model, "is_gguf", False):
        from shipyard.models import gguf_model

        return gguf_model.score_tokenized(model, tokenized)
    import torch

    seqs, starts = [s for s, _ in tokenized], [b for _, b in tokenized]
    plain = takes_logits_to_keep(model)
    shared = _shared_prefix(seqs, starts) if seqs and plain else 0
    device = model_device(model)
    prefix = _prefix_cache(model, seqs[0][:shared], device) if shared >= min_shared else None
    shared = shared if prefix is not None else 0
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    for idx in _batches(sorted(range(len(seqs)), key=lambda i: len(seqs[i])), seqs, shared, max_batch_tokens):
        spans = [(starts[i] - 1 - shared, len(seqs[i]) - 1 - shared) for i in idx]
        logp = _span_logprobs(model, tokenizer, [seqs[i][shared:] for i in idx], spans, prefix, shared, plain)
        for i, lp in zip(idx, logp, strict=True):
            target = torch.tensor(seqs[i][starts[i]:], device=lp.device)
            out[i] = (float(lp.gather(-1, target[:, None]).sum()), len(target))
    return out


def _batches(order: list[int], seqs, shared: int, max_tokens: int):
    batch: list[int] = []
    for i in order:  # ascending length: the newest row is the batch's longest
        if batch and (len(batch) + 1) * (len(seqs[i]) - shared) > max_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _span_logprobs(model, tokenizer, rest: list[list[int]], spans, prefix, shared: int, plain: bool):
    """Each row's log-softmax over the vocabulary at its ``(lo, hi)`` positions (of ``rest``);
    ``plain``: the model takes ``logits_to_keep`` (``takes_logits_to_keep``)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model_device(model)
    width = max(len(r) for r in rest)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rest], device=device)
    mask = torch.tensor([[1] * (shared + len(r)) + [0] * (width - len(r)) for r in rest], device=device)
    kwargs = {"past_key_values": _repeat(prefix, len(rest))} if prefix is not None else {}
    if plain:  # the vocabulary projection only where a token is scored
        keep = torch.zeros(ids.shape, dtype=torch.bool, device=device)
        for row, (lo, hi) in enumerate(spans):
            keep[row, lo:hi] = True
        kwargs["logits_to_keep"] = keep
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    if plain:
        sizes = [hi - lo for lo, hi in spans]
        return [torch.log_softmax(x.float(), dim=-1) for x in torch.split(logits.reshape(-1, logits.shape[-1]), sizes)]
    # a prompt-tuned model (peft) puts its virtual tokens first: keep the positions of ``ids``
    logits = logits[:, -ids.shape[1]:]
    return [torch.log_softmax(logits[row, lo:hi].float(), dim=-1) for row, (lo, hi) in enumerate(spans)]


def tokenized_pair(tokenizer, query: str, continuation: str, room: int) -> tuple[list[int], int]:
    """As lm-evaluation-harness: the pair is tokenized whole and the continuation is what follows
    the query's tokens (a merge across the boundary is scored with the continuation); a sequence
    over the context keeps its end (the continuation and the nearest context)."""
    ctx = tokenizer(query, add_special_tokens=False, verbose=False)["input_ids"]
    whole = tokenizer(query + continuation, add_special_tokens=False, verbose=False)["input_ids"]
    start = min(len(ctx), len(whole) - 1)
    cut = max(0, len(whole) - room)
    return whole[cut:], max(start - cut, 1)


def _shared_prefix(seqs, starts) -> int:
    """Tokens every sequence starts with, short of the first scored position of each."""
    first, n = seqs[0], min(starts) - 1
    for s in seqs[1:]:
        n = min(n, len(s))
        n = next((k for k in range(n) if s[k] != first[k]), n)
    return max(n, 0)


def takes_logits_to_keep(model) -> bool:
    """A transformers causal LM that takes ``logits_to_keep`` and an outside key/value cache (a
    prompt-tuned or unmerged peft model wraps it: it prepends virtual tokens or forwards kwargs)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _prefix_cache(model, prefix: list[int], device):
    import torch

    with torch.no_grad():
        cache = model(input_ids=torch.tensor([prefix], device=device), use_cache=True).past_key_values
    return cache if hasattr(cache, "batch_repeat_interleave") else None


def _repeat(cache, n: int):
    """A copy of a batch-1 cache for ``n`` rows (the forward pass extends the cache it is given)."""
    import copy

    c = copy.deepcopy(cache)
    c.batch_repeat_interleave(n)
    return c


def decode_latency(model, tokenizer, prompts: list[str], max_new_tokens: int) -> dict[str, float]:
    """Batch-1 greedy decoding: time to first token, ms per further token, tokens/s (medians)."""
    if getattr(model, "is_gguf", False):
        from shipyard.models import gguf_model

        return gguf_model.decode_latency(model, tokenizer, prompts, max_new_tokens)
    import statistics
    import time

    import torch

    device = model_device(model)

    def timed(ids, n):
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    room = model.config.max_position_embeddings - max_new_tokens
    encoded = [torch.tensor([tokenizer(p, add_special_tokens=False, verbose=False)["input_ids"][-room:]],
                            device=device) for p in prompts]
    first, per_token = [], []
    with torch.no_grad():
        timed(encoded[0], 2)  # warm-up: allocator, kernels
        for ids in encoded:
            t1 = timed(ids, 1)
            tn = timed(ids, max_new_tokens)
            first.append(t1)
            per_token.append((tn - t1) / max(max_new_tokens - 1, 1))
    ms = statistics.median(per_token) * 1000
    return {"ms_per_token": ms, "first_token_ms": statistics.median(first) * 1000,
            "tokens_per_s": 1000 / ms if ms > 0 else float("inf")}
