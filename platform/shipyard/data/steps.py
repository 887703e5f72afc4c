"""Shipyard's own datatrove pipeline steps: what datatrove lacks, or would download at run time.

Each step is a plain datatrove ``PipelineStep``: filters implement ``filter(doc) -> bool | (False,
reason)`` and inherit datatrove's counting (``total``, ``forwarded``, ``dropped_<reason>``) and its
exclusion writers. Heavy models (lingua, the profanity classifier) live in module-level caches, not
in the steps, so the steps pickle cheaply to datatrove's executor processes; ``warm_up`` fills the
caches in the parent before the executor forks, and the workers share them copy-on-write.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import unicodedata
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter

from shipyard.data.pii import scrub
from shipyard.data.shards import Quarantined, read_rows

_SPACES = re.compile(r"[ \t\u00a0]+")


def normalize_text(text: str, form: str = "NFC", fix_mojibake: bool = False) -> str:
    """ftfy repair (optional), Unicode normal form, unified newlines, collapsed spaces, stripped ends."""
    if fix_mojibake:
        import ftfy

        text = ftfy.fix_text(text, normalization=None, uncurl_quotes=False)
    if form != "none":
        text = unicodedata.normalize(form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(_SPACES.sub(" ", ln).strip() for ln in text.split("\n")).strip()


_DETECTORS: dict[tuple, object] = {}


def _detector(candidates: tuple[str, ...], accuracy: str = "high"):
    """One lingua detector per candidate set per process, models preloaded (module level, so a
    detector built in the parent before datatrove forks its workers is shared copy-on-write)."""
    key = (candidates, accuracy)
    if key not in _DETECTORS:
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

        langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in candidates]
        builder = LanguageDetectorBuilder.from_languages(*langs)
        if accuracy == "low":
            builder = builder.with_low_accuracy_mode()
        _DETECTORS[key] = builder.with_preloaded_language_models().build()
    return _DETECTORS[key]


def warm_up(pipeline: list) -> None:
    """Load every model the steps need once, in the parent, before the executor forks its workers.

    Without it each worker process loads lingua's models, the profanity classifier and spacy on
    its first document, which costs seconds per process.
    """
    from shipyard.data.word_tokenizer import CachedSpacyTokenizer

    CachedSpacyTokenizer("en").warm_up()  # the word-level rules' and MinHash's shared spaCy pipeline
    for step in pipeline:
        if hasattr(step, "warm_up"):
            step.warm_up()


class ShardReader(PipelineStep):
    """Task ``rank`` reads shard file ``files[rank]``; malformed rows go to ``quarantine/<rank>.jsonl``.

    Quarantined raw rows are PII-scrubbed before they are written, like everything else on disk.
    """

    type = "📖 - READER"
    name = "🛡 shard reader"

    def __init__(self, files: list[str], quarantine_folder: str, text_key: str = "text",
                 max_docs: int | None = None, pii_kinds: tuple[str, ...] = (), root: str | None = None):
        super().__init__()
        self.files, self.quarantine_folder, self.text_key = files, quarantine_folder, text_key
        self.root = root  # sources name files by their path under it (shards.shard_label)
        self.max_docs, self.pii_kinds = max_docs, pii_kinds

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        os.makedirs(self.quarantine_folder, exist_ok=True)
        n = 0
        with open(Path(self.quarantine_folder) / f"{rank:05d}.jsonl", "w", encoding="utf-8") as qf:
            for item in read_rows(self.files[rank], self.text_key, self.root):
                if self.max_docs is not None and n >= self.max_docs:
                    break
                n += 1
                if isinstance(item, Quarantined):
                    self.stat_update("quarantined", f"quarantined_{item.kind}")
                    raw = scrub(item.raw, self.pii_kinds)[0] if self.pii_kinds else item.raw
                    qf.write(json.dumps({"source": item.source, "reason": item.reason, "raw": raw},
                                        ensure_ascii=False) + "\n")
                    continue
                self.stat_update("read")
                doc = Document(text=item.text, id=item.source, metadata=dict(item.meta))
                self.update_doc_stats(doc)
                yield doc


class RankReader(PipelineStep):
    """Task ``rank`` reads ``<folder>/<rank>.jsonl.gz`` as written by datatrove's JsonlWriter (or nothing).

    Unlike a globbing reader it keeps task ``rank`` on shard ``rank`` even when an earlier phase
    wrote no file for some shard, which the dedup stages' per-rank document indices rely on.
    """

    type = "📖 - READER"
    name = "📂 rank reader"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = Path(self.folder) / f"{rank:05d}.jsonl.gz"
        if not path.exists():
            return
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                obj = json.loads(line)
                self.stat_update("read")
                yield Document(text=obj["text"], id=obj["id"], metadata=obj.get("metadata") or {})


class Normalizer(BaseFormatter):
    name = "🔤 normalize"

    def __init__(self, form: str = "NFC", fix_mojibake: bool = True):
        super().__init__()
        self.form, self.fix_mojibake = form, fix_mojibake

    def format(self, text: str) -> str:
        return normalize_text(text, self.form, self.fix_mojibake)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in super().run(data, rank, world_size):
            self.update_doc_stats(doc)  # doc_len after normalizing: the drop table's chars_out
            yield doc


class PiiScrubber(PipelineStep):
    """Replace PII by typed placeholders; counts per kind go to the stats (``pii_email``...)."""

    type = "✂️ - FORMAT"
    name = "🕵 PII scrub"

    def __init__(self, kinds: tuple[str, ...]):
        super().__init__()
        self.kinds = tuple(kinds)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("total")
            with self.track_time():
                doc.text, counts = scrub(doc.text, self.kinds)
            if counts:
                self.stat_update("docs_with_pii")
                doc.metadata["pii"] = dict(counts)
                for kind, n in counts.items():
                    self.stat_update(f"pii_{kind}", value=n)
            self.update_doc_stats(doc)
            yield doc


class LengthFilter(BaseFilter):
    name = "📏 length"

    def __init__(self, min_chars: int, max_chars: int, min_words: int, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.min_chars, self.max_chars, self.min_words = min_chars, max_chars, min_words

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if len(doc.text) < self.min_chars:
            return False, "too_short"
        if len(doc.text) > self.max_chars:
            return False, "too_long"
        if len(doc.text.split()) < self.min_words:
            return False, "too_few_words"
        return True


class LanguageFilter(BaseFilter):
    """Keep documents whose detected language is in ``keep`` (lingua; its models ship in the wheel)."""

    name = "🌍 language (lingua)"

    def __init__(self, keep: list[str], candidates: list[str], min_confidence: float,
                 sample_chars: int = 500, accuracy: str = "high", exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.keep, self.candidates = list(keep), list(candidates)
        self.min_confidence, self.sample_chars, self.accuracy = min_confidence, sample_chars, accuracy

    def warm_up(self) -> None:
        _detector(tuple(self.candidates), self.accuracy)

    def _detect(self, text: str):
        detector = _detector(tuple(self.candidates), self.accuracy)
        return detector.compute_language_confidence_values(text[: self.sample_chars])

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        values = self._detect(doc.text)
        top = values[0]
        code = top.language.iso_code_639_1.name.lower()
        doc.metadata["language"], doc.metadata["language_score"] = code, round(top.value, 4)
        if code in self.keep and top.value >= self.min_confidence:
            return True
        return False, "language"


class ToxicityFilter(BaseFilter):
    """Score with alt-profanity-check (a linear model shipped in its wheel); drop or tag above threshold.

    The scores land in the stats as a 10-bin histogram (``toxicity_bin_0`` .. ``toxicity_bin_9``).
    """

    name = "☣ toxicity (profanity-check)"

    def __init__(self, threshold: float, action: str = "drop", batch_size: int = 256, exclusion_writer=None):
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.threshold, self.action = threshold, action

    def warm_up(self) -> None:
        from profanity_check import predict_prob

        predict_prob(["warm up"])

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        from profanity_check import predict_prob

        scores = predict_prob([d.text for d in batch])
        out: list[bool | tuple[bool, str]] = []
        for doc, score in zip(batch, scores, strict=True):
            score = float(score)
            self.stat_update(f"toxicity_bin_{min(int(score * 10), 9)}")
            doc.metadata["toxicity"] = round(score, 4)
            if score < self.threshold:
                out.append(True)
            elif self.action == "tag":
                doc.metadata["toxic"] = True
                self.stat_update("tagged_toxic")
                out.append(True)
            else:
                out.append((False, "toxic"))
        return out


def document_text(doc: Document) -> str:
    """Content getter of the exact-dedup stages (module level so it pickles)."""
    return doc.text
