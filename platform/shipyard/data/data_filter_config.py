"""Typed config of the data_filter stage: which steps run, and each step's thresholds.

    data_filter:
      input: data/demo/raw
      steps: [normalize, pii, language, length, gopher_quality, toxicity, exact_dedup, minhash_dedup]
      length: {min_chars: 40}
      minhash_dedup: {threshold: 0.8}

Steps always run in the canonical order of ``STEP_ORDER``: normalize and scrub first, so that
nothing written to the drop folders carries raw PII; cheap rules before costly ones (length before
language ID before the Gopher/C4 rules); dedup last, so it only hashes survivors.
Naming a step that does not exist fails at load time with the list of valid names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from shipyard.schema import StrictModel

STEP_ORDER = (
    "normalize", "pii", "length", "language", "gopher_quality", "gopher_repetition", "c4_quality",
    "toxicity", "exact_dedup", "minhash_dedup",
)
PII_TYPES = ("email", "phone", "ip", "credit_card", "iban")


class NormalizeStep(StrictModel):
    form: Literal["NFC", "NFKC", "none"] = Field("NFC", description="Unicode normal form.")
    fix_mojibake: bool = Field(True, description="Repair mojibake and broken escapes with ftfy.")


class PiiStep(StrictModel):
    types: list[Literal["email", "phone", "ip", "credit_card", "iban"]] = Field(
        list(PII_TYPES), description="PII kinds replaced by typed placeholders (<EMAIL>, <PHONE>...).")


class LanguageStep(StrictModel):
    keep: list[str] = Field(["en"], min_length=1, description="ISO 639-1 codes of languages to keep.")
    candidates: list[str] = Field(
        ["en", "de", "fr", "es", "it", "pt", "nl"], min_length=2,
        description="Languages the detector chooses among (more = slower, more memory).")
    min_confidence: float = Field(0.5, ge=0, le=1, description="Drop if P(kept language) is below this.")
    sample_chars: int = Field(500, gt=0, description="Detect on the first N characters of a document.")
    accuracy: Literal["high", "low"] = Field(
        "high", description="lingua mode: high (1-5-gram models, ~270 MB) or low (trigrams, ~30 MB, "
                            "as good on texts over ~120 chars).")

    @model_validator(mode="after")
    def _keep_in_candidates(self) -> LanguageStep:
        missing = sorted(set(self.keep) - set(self.candidates))
        if missing:
            raise ValueError(f"keep languages {missing} are not among candidates {self.candidates}")
        return self


class LengthStep(StrictModel):
    min_chars: int = Field(50, ge=0)
    max_chars: int = Field(100_000, gt=0)
    min_words: int = Field(5, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> LengthStep:
        if self.min_chars >= self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must be < max_chars ({self.max_chars})")
        return self


class GopherQualityStep(StrictModel):
    """datatrove GopherQualityFilter thresholds (Rae et al. 2021, appendix A)."""

    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: int | None = 3
    max_avg_word_length: int | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2


class GopherRepetitionStep(StrictModel):
    """datatrove GopherRepetitionFilter thresholds.

    ``top_n_grams`` counts the most frequent n-gram even when it occurs once (as datatrove and the
    paper do), so documents of a few dozen words fail it by construction: loosen it for short docs.
    """

    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: list[tuple[int, float]] = [(2, 0.2), (3, 0.18), (4, 0.16)]
    dup_n_grams: list[tuple[int, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]


class C4QualityStep(StrictModel):
    """datatrove C4QualityFilter switches (Raffel et al. 2020)."""

    split_paragraph: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = Field(5, ge=0)
    min_words_per_line: int = Field(3, ge=0)
    max_word_length: int = Field(1000, gt=0)
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class ToxicityStep(StrictModel):
    threshold: float = Field(0.8, ge=0, le=1, description="Profanity probability above which a doc is toxic.")
    action: Literal["drop", "tag"] = Field("drop", description="Drop toxic docs, or keep them with a tag.")
    batch_size: int = Field(256, gt=0)


class ExactDedupStep(StrictModel):
    pass


class MinhashDedupStep(StrictModel):
    n_grams: int = Field(5, gt=0, description="Shingle size in words.")
    num_buckets: int = Field(14, gt=0, description="LSH bands.")
    hashes_per_bucket: int = Field(8, gt=0, description="Rows per band.")
    seed: int = 1


class DataFilterConfig(StrictModel):
    """Raw text shards -> clean corpus + quarantine + drop-reason table (datatrove pipeline)."""

    input: str = Field(description="Directory (or file) of raw shards: *.jsonl[.gz] or *.txt[.gz].")
    text_key: str = Field("text", description="JSONL field that holds the document text.")
    steps: list[str] = Field(list(STEP_ORDER), description=f"Steps to run, from {', '.join(STEP_ORDER)}.")
    max_docs: int | None = Field(None, gt=0, description="Stop after this many rows per shard (smoke runs).")
    workers: int = Field(0, ge=0, description="Local processes; 0 = all cores.")
    fan_out: int = Field(1, ge=1, description="Pods the filter phase fans out over on a cluster (ParallelFor).")
    normalize: NormalizeStep = NormalizeStep()
    pii: PiiStep = PiiStep()
    language: LanguageStep = LanguageStep()
    length: LengthStep = LengthStep()
    gopher_quality: GopherQualityStep = GopherQualityStep()
    gopher_repetition: GopherRepetitionStep = GopherRepetitionStep()
    c4_quality: C4QualityStep = C4QualityStep()
    toxicity: ToxicityStep = ToxicityStep()
    exact_dedup: ExactDedupStep = ExactDedupStep()
    minhash_dedup: MinhashDedupStep = MinhashDedupStep()

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, steps: list[str]) -> list[str]:
        unknown = [s for s in steps if s not in STEP_ORDER]
        if unknown:
            raise ValueError(f"unknown step(s) {unknown}; valid steps: {', '.join(STEP_ORDER)}")
        if len(set(steps)) != len(steps):
            raise ValueError(f"steps listed twice: {sorted({s for s in steps if steps.count(s) > 1})}")
        return [s for s in STEP_ORDER if s in steps]

    def enabled(self, step: str) -> bool:
        return step in self.steps
