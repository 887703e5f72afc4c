"""The RAG prompt: retrieved chunks, numbered, fitted into what the model has left of its context.

The serving runtime builds every RAG request with it and the rag eval suite scores the same prompt,
so what is measured is what is served.
"""

from __future__ import annotations

# Short on purpose: small models have little context. Sources are numbered in the prompt; their
# names and ids come back in the response's ``citations``.
TEMPLATE = "Sources:\n{sources}\nAnswer from the sources, citing them as [1].\nQuestion: {question}"
MIN_CHUNK_TOKENS = 16  # a source cut shorter than this is left out instead


def augment(question: str, chunks: list[dict], count_tokens, room_for) -> tuple[str, list[dict]]:
    """(prompt text, citations): the template with as many retrieved chunks as fit the model.

    ``room_for(text)`` is how many tokens the model still has for sources once ``text`` (the
    template with no sources) is the user's message; a chunk that does not fit whole is cut to
    the room left (marked ``truncated``), down to ``MIN_CHUNK_TOKENS``.
    """
    room = room_for(TEMPLATE.format(sources="", question=question))
    lines, cites = [], []
    for chunk in chunks:
        n = len(cites) + 1
        head = f"[{n}] "
        text, cost, truncated = chunk["text"], count_tokens(head + chunk["text"] + "\n") + 2, False
        if cost > room:
            keep = room - count_tokens(head) - 4
            if keep < MIN_CHUNK_TOKENS:
                break
            text, cost, truncated = first_tokens(chunk["text"], keep, count_tokens), room, True
        lines.append(head + text + "\n")
        cites.append({"index": n, "chunk_id": chunk["chunk_id"], "source": chunk["source"],
                      "doc_id": chunk.get("doc_id"), "score": chunk["score"], "text": text, "truncated": truncated})
        room -= cost
        if truncated:
            break
    if not cites:
        return question, []
    return TEMPLATE.format(sources="".join(lines), question=question), cites


def first_tokens(text: str, n: int, count_tokens) -> str:
    """The longest word-boundary prefix of ``text`` with at most ``n`` tokens (binary search on words)."""
    words = text.split(" ")
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid])) <= n:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo]) + " ..."
