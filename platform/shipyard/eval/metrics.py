"""Overlap metrics of answers against references: ROUGE (rouge-score), BLEU and chrF (sacrebleu), exact match.

What needs the model (generation, log-probabilities, perplexity) is ``shipyard.models.inference``."""

from __future__ import annotations


def rouge(predictions: list[str], references: list[str],
          keys: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")) -> dict[str, float]:
    """Mean ROUGE F1 per key (rouge-score, with stemming; rougeLsum splits summaries on newlines)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        for key, score in scorer.score(ref, pred).items():
            totals[key] += score.fmeasure
    return {k: v / max(len(predictions), 1) for k, v in totals.items()}


def rouge_rows(predictions: list[str], references: list[str],
               keys: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")) -> dict[str, list[float]]:
    """ROUGE F1 of each prediction against its reference, per key (their means are ``rouge``)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    out: dict[str, list[float]] = {k: [] for k in keys}
    for pred, ref in zip(predictions, references, strict=True):
        for key, score in scorer.score(ref, pred).items():
            out[key].append(score.fmeasure)
    return out


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu, 0-100)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (sacrebleu, 0-100): character n-gram F-score, kinder to short answers than BLEU."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(predictions, [references]).score)


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lowercase, no punctuation, no articles, single spaces."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after ``normalize_answer``."""
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True))
    return hits / max(len(predictions), 1)


