"""The train_tokenizer stage's config (``shipyard.data.train_tokenizer``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shipyard.schema import StrictModel


class TokenizerConfig(StrictModel):
    """Tokenizer trained on the clean corpus (``tokenizers``), saved as a transformers tokenizer."""

    kind: Literal["bpe", "wordpiece", "unigram"] = Field(
        "bpe", description="bpe: byte-level BPE (GPT); wordpiece: BERT; unigram: SentencePiece/T5.")
    vocab_size: int = Field(4096, ge=300, le=1_000_000, description="Target vocabulary size.")
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency for a merge (bpe, wordpiece).")
    model_max_length: int = Field(512, gt=0, description="Context length recorded in the tokenizer.")
    add_prefix_space: bool = Field(
        True, description="bpe: a space before each text, so its first word is tokenized like every other one "
                          "(' Calendar', not 'C|al|endar'), as GPT-2 and RoBERTa do.")
    lowercase: bool = Field(False, description="Lowercase before tokenizing (wordpiece, unigram).")
    extra_ids: int = Field(0, ge=0, le=1000, description="Sentinel tokens <extra_id_N> (T5 span corruption).")
    heldout_every: int = Field(50, ge=0, description="Hold out every N-th document for the stats (0: none).")
    stats_docs: int = Field(500, gt=0, description="Held-out documents the stats are measured on.")
