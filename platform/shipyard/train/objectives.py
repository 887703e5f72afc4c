"""The three pretraining objectives as batch builders over packed token blocks.

- clm: labels = inputs (the model shifts them): every position predicts the next token.
- mlm: 15% of positions are chosen; 80% become the mask token, 10% a random token, 10% stay;
  only chosen positions carry labels (BERT, Devlin et al. 2019).
- span: T5's span corruption (Raffel et al. 2020): ~15% of tokens in spans of mean length 3 are
  replaced by one sentinel per span in the input; the target lists each sentinel and its span.

Randomness comes from a generator the loop seeds per (step, micro-batch, rank), so a resumed
run and a run split over processes build exactly the batches a straight run builds.
"""

from __future__ import annotations

import math
from pathlib import Path

from shipyard.data.train_tokenizer import iter_corpus


def pack_corpus(corpus_dir: str | Path, tokenizer, block: int):
    """Tokenize every document, join with a separator, cut into ``block``-token rows ([n, block])."""
    import torch

    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    ids: list[int] = []
    docs = 0
    for text in iter_corpus(corpus_dir):
        ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        ids.append(sep)
        docs += 1
    n = len(ids) // block
    if n < 2:
        raise ValueError(f"corpus too small: {docs} documents, {len(ids)} tokens make {n} blocks of {block} "
                         f"(need at least 2: one to train on, one to validate)")
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def span_lengths(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, spans) for a row of ``length`` tokens: fixed, so every row has the same shape."""
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = max(1, min(round(noise / mean_span), noise, length - noise))
    return noise, spans


def _segment(n_items: int, n_segments: int, gen):
    """A random composition of n_items into n_segments positive parts."""
    import torch

    if n_segments == 1:
        return [n_items]
    cuts = (torch.randperm(n_items - 1, generator=gen)[: n_segments - 1] + 1).sort().values.tolist()
    edges = [0, *cuts, n_items]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def span_corrupt(rows, sentinel_ids: list[int], eos_id: int, noise_density: float, mean_span: float, gen):
    """T5 inputs and targets for each row: ([B, L - noise + spans + 1], [B, noise + spans + 1])."""
    import torch

    length = rows.shape[1]
    noise, spans = span_lengths(length, noise_density, mean_span)
    inputs, targets = [], []
    for row in rows.tolist():
        noise_len, keep_len = _segment(noise, spans, gen), _segment(length - noise, spans, gen)
        inp, tgt, pos = [], [], 0
        for i in range(spans):
            inp.extend(row[pos : pos + keep_len[i]])
            pos += keep_len[i]
            inp.append(sentinel_ids[i])
            tgt.append(sentinel_ids[i])
            tgt.extend(row[pos : pos + noise_len[i]])
            pos += noise_len[i]
        inputs.append(inp + [eos_id])
        targets.append(tgt + [eos_id])
    return torch.tensor(inputs), torch.tensor(targets)


def mlm_mask(rows, mask_id: int, vocab_size: int, special_ids: list[int], probability: float, gen):
    """BERT masking: (input_ids, labels) with labels -100 except at the chosen positions."""
    import torch

    labels = rows.clone()
    chosen = torch.rand(rows.shape, generator=gen) < probability
    if special_ids:
        chosen &= ~torch.isin(rows, torch.tensor(special_ids))
    labels[~chosen] = -100
    inputs = rows.clone()
    replace = chosen & (torch.rand(rows.shape, generator=gen) < 0.8)
    inputs[replace] = mask_id
    randomize = chosen & ~replace & (torch.rand(rows.shape, generator=gen) < 0.5)
    inputs[randomize] = torch.randint(vocab_size, rows.shape, generator=gen)[randomize]
    return inputs, labels


class Objective:
    """Turns a tensor of packed rows into the model's keyword arguments for one objective."""

    def __init__(self, cfg, tokenizer):
        self.cfg, self.kind = cfg, cfg.objective
        self.vocab = len(tokenizer)
        if self.kind == "mlm":
            self.mask_id = tokenizer.mask_token_id
            self.special = sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id})
        if self.kind == "span":
            _, spans = span_lengths(cfg.context_length, cfg.noise_density, cfg.mean_span_length)
            self.sentinels = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(spans)])
            self.eos = tokenizer.eos_token_id

    @staticmethod
    def sentinels_needed(cfg) -> int:
        return span_lengths(cfg.context_length, cfg.noise_density, cfg.mean_span_length)[1]

    def tokens(self, rows) -> int:
        """Tokens the model processes for ``rows`` (inputs plus decoder targets for T5)."""
        if self.kind == "span":
            noise, spans = span_lengths(rows.shape[1], self.cfg.noise_density, self.cfg.mean_span_length)
            return rows.shape[0] * (rows.shape[1] + 2 * spans + 2)
        return rows.numel()

    def batch(self, rows, gen) -> dict:
        if self.kind == "clm":
            return {"input_ids": rows, "labels": rows}
        if self.kind == "mlm":
            inputs, labels = mlm_mask(rows, self.mask_id, self.vocab, self.special, self.cfg.mlm_probability, gen)
            return {"input_ids": inputs, "labels": labels}
        inputs, targets = span_corrupt(rows, self.sentinels, self.eos, self.cfg.noise_density,
                                       self.cfg.mean_span_length, gen)
        return {"input_ids": inputs, "labels": targets}


def step_seed(seed: int, step: int, micro: int) -> int:
    """A distinct, reproducible seed per (run seed, optimizer step, global micro-batch index)."""
    return (seed * 1_000_003 + step * 1009 + micro) % (2**63 - 1)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
