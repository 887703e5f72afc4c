"""Few-shot examples picked per question: the first k of a pool, or the k most like the question.

    pool = ExamplePool(spec.examples)                       # a prompt's own examples
    pool = ExamplePool.from_file("data/demo/apps/word-problems-train.jsonl")
    pool.pick("Tom has 4 boxes of 6 pencils ...", k=3, select="similar")   # -> [Example, ...]

``similar`` is LangChain's semantic-similarity example selector done with the RAG stack's parts: the
pool's inputs are embedded once by the embedder the RAG index uses (all-MiniLM-L6-v2, normalized) and
searched exactly by cosine, most similar first (ties keep file order). From a file, rows are
``{input, output}`` or ``{question, rationale}`` (the shipped word problems); a bad row stops the load with
its file:line, as eval data does.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

from shipyard.apps.prompts import Example

Select = Literal["first", "similar"]


def _row(obj: dict):
    for inp, out in (("input", "output"), ("question", "rationale")):
        if isinstance(obj.get(inp), str) and obj[inp].strip() and isinstance(obj.get(out), str) and obj[out].strip():
            return Example(input=obj[inp], output=obj[out])
    return "needs {input, output} or {question, rationale} (non-empty strings)"


class ExamplePool:
    def __init__(self, examples: list[Example], embedder=None):
        self.examples = list(examples)
        self._embedder, self._vecs, self._lock = embedder, None, threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path, embedder=None) -> ExamplePool:
        from shipyard.data.shards import parse_records

        rows, bad = parse_records(path, _row, "few-shot examples", "bad_example")
        if bad:
            raise ValueError(f"{bad[0].source}: {bad[0].reason}" + (f" (and {len(bad) - 1} more bad rows)"
                                                                    if len(bad) > 1 else ""))
        return cls([r for r, _ in rows], embedder)

    def _vectors(self):
        with self._lock:  # one embedding of the pool, whichever request asks first
            if self._vecs is None:
                if self._embedder is None:
                    from shipyard.features.embed import Embedder

                    self._embedder = Embedder()
                self._vecs = self._embedder.embed([e.input for e in self.examples])
        return self._vecs

    def pick(self, question: str, k: int | None, select: Select = "first") -> list[Example]:
        """``k`` examples (all when None): the pool's first, or the most similar to ``question``."""
        k = len(self.examples) if k is None else min(k, len(self.examples))
        if select == "first" or k == 0:
            return self.examples[:k]
        import numpy as np

        scores = self._vectors() @ self._embedder.embed([question])[0]
        order = np.argsort(-scores, kind="stable")[:k]
        return [self.examples[i] for i in order]
