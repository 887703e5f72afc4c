"""train_tokenizer stage: byte-level BPE (GPT-2 style) on the clean corpus, saved for transformers.

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # second step

The saved directory loads with ``AutoTokenizer.from_pretrained`` and carries the chat template
of ``shipyard.templates`` so that every later stage and the server format prompts identically.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from shipyard.config import TokenizerConfig
from shipyard.templates import CHAT_TEMPLATE

SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"}


def iter_corpus(corpus_dir: str | Path) -> Iterator[str]:
    with open(Path(corpus_dir) / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def run_train_tokenizer(cfg: TokenizerConfig, corpus_dir: str | Path, output_dir: str | Path) -> dict:
    """Train the tokenizer on ``corpus_dir/corpus.jsonl`` and save it to ``output_dir``.

    Returns:
        Stats: vocab size and fertility (tokens per whitespace word) on the corpus.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(iter_corpus(corpus_dir), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=cfg.model_max_length, **SPECIAL_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(output_dir)

    words = tokens = 0
    for i, text in enumerate(iter_corpus(corpus_dir)):
        if i >= 500:
            break
        words += len(text.split())
        tokens += len(tok.encode(text).ids)
    return {"vocab_size": tok.get_vocab_size(), "fertility": tokens / max(words, 1)}
