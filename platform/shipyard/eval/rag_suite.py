"""The ``rag`` eval suite: retrieval from the run's index, and what the retrieved sources do for a model.

Retrieval is the sidecar's own (``shipyard.features.retrieve.load_index``: the same index version,
embedder and search), done once per suite before any model loads; it is the same for every model
of the run. Each model is then scored on the reference answers twice: after the question alone,
and after the prompt the serving runtime builds with the sources (``shipyard.features.rag_prompt.augment``
fits them to the model's context, as a request would). A model that reads its sources gives the
reference answer a lower perplexity with them (``context_gain`` > 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path


def _rag_row(obj: dict):
    for key in ("question", "answer", "source"):
        if not (isinstance(obj.get(key), str) and obj[key].strip()):
            return f"missing field {key!r} (a non-empty string)"
    return {"question": obj["question"], "answer": obj["answer"], "source": obj["source"]}


def load_rag_rows(path: str) -> tuple[list, list]:
    """([(row, file:line), ...], quarantined) of ``{question, answer, source}`` rows."""
    from shipyard.data.shards import parse_records

    return parse_records(path, _rag_row, "RAG questions", "bad_rag_row")


def retrieve(rows: list[dict], suite, index_ref: str, feast_repo: str | Path | None) -> list[dict]:
    """``rows`` with ``chunks`` (the top_k hits of each question, best first), searched as the sidecar does."""
    from shipyard.features.retrieve import load_index

    retriever, embedder, info = load_index(index_ref, feast_repo)
    if suite.tenant not in info["tenants"]:
        raise ValueError(f"suite {suite.name!r}: tenant {suite.tenant!r} has no documents in index {info['ref']} "
                         f"(tenants: {sorted(info['tenants'])})")
    vecs = embedder.embed([r["question"] for r in rows])
    return [{**r, "index": info["ref"], "chunks": [asdict(h) for h in retriever.search(v, suite.tenant, suite.top_k)]}
            for r, v in zip(rows, vecs, strict=True)]


def retrieval_metrics(rows: list[dict]) -> dict[str, float]:
    """hit_rate: share of questions whose source document is among the hits; mrr: mean 1/rank of its first hit."""
    ranks = [next((i + 1 for i, c in enumerate(r["chunks"]) if c["doc_id"] == r["source"]), None) for r in rows]
    return {"hit_rate": sum(k is not None for k in ranks) / len(rows),
            "mrr": sum(1 / k for k in ranks if k is not None) / len(rows)}


def run_rag_suite(suite, rows: list[dict], model, tokenizer, spec):
    from shipyard.data.preferences import render_prompt
    from shipyard.eval.result import SuiteResult
    from shipyard.features.rag_prompt import MIN_CHUNK_TOKENS, TEMPLATE, augment, first_tokens
    from shipyard.models.inference import score_continuations

    context = min(spec.context_length, model.config.max_position_embeddings)
    count = lambda text: len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    pairs: dict[str, list[tuple[str, str]]] = {"plain": [], "rag": []}
    samples, cited = [], 0
    for row in rows:
        answer = " " + row["answer"]
        # the answer scored: up to a quarter of the context, less where the question's prompt would
        # leave no room for one source (MIN_CHUNK_TOKENS and its [n] marker)
        bare = count(render_prompt(TEMPLATE.format(sources="", question=row["question"]), tokenizer))
        budget = max(8, min(context // 4, context - bare - MIN_CHUNK_TOKENS - 8))
        answer = answer if count(answer) <= budget else first_tokens(answer, budget, count).removesuffix(" ...")
        room = lambda text, answer=answer: context - count(render_prompt(text, tokenizer)) - count(answer)
        text, cites = augment(row["question"], row["chunks"], count, room)
        cited += bool(cites)
        prompts = {"plain": render_prompt(row["question"], tokenizer), "rag": render_prompt(text, tokenizer)}
        for key, prompt in prompts.items():
            pairs[key].append((prompt, answer))
        if len(samples) < 3:
            samples.append({"prompt": prompts["rag"], "reference": row["answer"],
                            "answer": f"(retrieved: {', '.join(c['doc_id'] for c in row['chunks'])}; "
                                      f"expected: {row['source']})"})
    if not cited:
        raise ValueError(f"suite {suite.name!r}: no retrieved source fits a context of {context} tokens next to "
                         f"the question and answer; raise evaluate.context_length")
    nll = {key: score_continuations(model, tokenizer, p) for key, p in pairs.items()}  # batched
    plain, rag = (math.exp(-sum(lp for lp, _ in s) / max(sum(n for _, n in s), 1)) for s in nll.values())
    return SuiteResult({**retrieval_metrics(rows), "answer_perplexity": plain, "answer_perplexity_rag": rag,
                        "context_gain": plain / rag}, samples)

