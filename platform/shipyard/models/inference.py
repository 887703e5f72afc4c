"""Inference helpers every stage shares: batched generation, log-probabilities, perplexity, latency.

They sit with the model loaders (layer L1) because training (forgetting checks, PPO samples), optimize
(each step measured), evaluation and serving all call them.
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
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), decoded without special tokens.

    ``temperature`` > 0 samples instead, with optional ``top_k``/``top_p`` (seed torch to reproduce).

    Prompts longer than the model's context minus ``max_new_tokens`` keep their end (where the
    instruction template puts the response header).
    """
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
            out = model.generate(**enc, max_new_tokens=max_new_tokens, **sampling,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            outputs.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs


def choice_logprobs(model, tokenizer, query: str, choices: list[str]) -> list[float]:
    """Summed log-probability of each choice as the continuation of ``query``.

    As lm-evaluation-harness: the pair is tokenized whole and the continuation is what follows
    the query's tokens, so a merge across the boundary is scored with the continuation.
    """
    return [lp for lp, _ in continuation_logprobs(model, tokenizer, query, choices)]


def continuation_logprobs(model, tokenizer, query: str, choices: list[str]) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each choice as the continuation of ``query``."""
    import torch

    ctx = tokenizer(query, add_special_tokens=False, verbose=False)["input_ids"]
    room = model.config.max_position_embeddings
    seqs, starts = [], []
    for choice in choices:
        whole = tokenizer(query + choice, add_special_tokens=False, verbose=False)["input_ids"]
        start = min(len(ctx), len(whole) - 1)
        cut = max(0, len(whole) - room)  # keep the end: the continuation and the nearest context
        seqs.append(whole[cut:])
        starts.append(max(start - cut, 1))
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model_device(model)
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    # a prompt-tuned model (peft) puts its virtual tokens first: keep the positions of ``ids``
    logp = torch.log_softmax(logits[:, -ids.shape[1]:].float(), dim=-1)
    out = []
    for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        target = torch.tensor(seq[start:], device=device)
        out.append((float(logp[i, start - 1 : len(seq) - 1].gather(-1, target[:, None]).sum()), len(target)))
    return out


def decode_latency(model, tokenizer, prompts: list[str], max_new_tokens: int) -> dict[str, float]:
    """Batch-1 greedy decoding: time to first token, ms per further token, tokens/s (medians)."""
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
