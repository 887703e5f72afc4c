"""Metric functions: perplexity, ROUGE (rouge-score), BLEU (sacrebleu), batched greedy generation."""

from __future__ import annotations

import math


def perplexity(model, tokenizer, texts: list[str], context_length: int) -> float:
    """Token-weighted perplexity over ``texts``, each scored in non-overlapping windows."""
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            for i in range(0, len(ids) - 1, context_length):
                window = torch.tensor([ids[i : i + context_length]])
                if window.shape[1] < 2:
                    continue
                loss = model(input_ids=window, labels=window).loss.item()
                n = window.shape[1] - 1
                nll += loss * n
                count += n
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
                            add_special_tokens=False, truncation=True, max_length=room)
            sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or None,
                        "top_p": top_p} if temperature else {"do_sample": False}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, **sampling,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            outputs.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (with stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        for key, score in scorer.score(ref, pred).items():
            totals[key] += score.fmeasure
    return {k: v / max(len(predictions), 1) for k, v in totals.items()}


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu, 0-100)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(predictions, [references]).score)
