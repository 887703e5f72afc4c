"""Count-based baselines a pretrained model must beat: unigram and bigram language models.

Fitted on the training tokens, scored on the held-out ones, on the same positions the model is
scored on (every token of a block but its first). The unigram is add-one smoothed; the bigram is
Witten-Bell interpolated with it (parameter-free: a context seen with many different followers
trusts its counts less). A transformer that does not beat the bigram on bits per byte has learned
no more than which token tends to follow which.
"""

from __future__ import annotations

import math
from collections import Counter


def _ids(block) -> list[int]:
    """A block of token ids: a list, or a row of a 2-D tensor."""
    return block.tolist() if hasattr(block, "tolist") else list(block)


def fit_ngrams(blocks) -> tuple[Counter, Counter, Counter, Counter]:
    """(unigram counts, bigram counts, context counts, distinct followers per context) of ``blocks``
    (a list of token-id lists, or a 2-D tensor)."""
    uni, bi = Counter(), Counter()
    for block in blocks:
        ids = _ids(block)
        uni.update(ids[1:])
        bi.update(zip(ids[:-1], ids[1:], strict=False))
    context, followers = Counter(), Counter()
    for (v, _), c in bi.items():
        context[v] += c
        followers[v] += 1
    return uni, bi, context, followers


def ngram_bits(blocks, counts, vocab_size: int) -> dict[str, list[float]]:
    """Bits each block costs (positions 1..n-1) under the unigram and the bigram model."""
    uni, bi, context, followers = counts
    total = sum(uni.values())
    p_uni = lambda w: (uni[w] + 1) / (total + vocab_size)
    out: dict[str, list[float]] = {"unigram": [], "bigram": []}
    for block in blocks:
        ids = _ids(block)
        u = b = 0.0
        for v, w in zip(ids[:-1], ids[1:], strict=False):
            pu = p_uni(w)
            c, t = context[v], followers[v]
            pb = (bi[(v, w)] + t * pu) / (c + t) if c else pu
            u -= math.log2(pu)
            b -= math.log2(pb)
        out["unigram"].append(u)
        out["bigram"].append(b)
    return out
