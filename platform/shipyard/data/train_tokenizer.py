"""train_tokenizer stage: byte-level BPE (GPT), WordPiece (BERT) or Unigram (SentencePiece/T5).

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # second step (BPE)

Trained with HuggingFace ``tokenizers`` on the clean corpus, minus a held-out sample on which the
stats are measured: vocabulary size, fertility (tokens per whitespace word), compression (UTF-8
bytes per token) and the unknown-token rate. The saved directory loads with
``AutoTokenizer.from_pretrained`` and carries the chat template of ``shipyard.templates``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from shipyard.data.train_tokenizer_config import TokenizerConfig
from shipyard.templates import CHAT_TEMPLATE

# Special tokens per model family, as transformers names them.
SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"}
FAMILY_SPECIALS = {
    "bpe": SPECIAL_TOKENS,
    "wordpiece": {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
                  "mask_token": "[MASK]"},
    "unigram": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
}


def iter_corpus(corpus_dir: str | Path) -> Iterator[str]:
    with open(Path(corpus_dir) / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def _is_heldout(i: int, every: int) -> bool:
    return every > 0 and i % every == every - 1


def build_tokenizer(cfg: TokenizerConfig):
    """An untrained ``tokenizers.Tokenizer`` and its trainer for ``cfg.kind``; also the specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = dict(FAMILY_SPECIALS[cfg.kind])
    extra = [f"<extra_id_{i}>" for i in range(cfg.extra_ids)]
    special_list = list(specials.values()) + extra
    if cfg.kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=cfg.add_prefix_space)
        # the prefix space comes off again when decoding (as Llama's tokenizer strips its "▁")
        tok.decoder = (decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
                       if cfg.add_prefix_space else decoders.ByteLevel())
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                      special_tokens=special_list,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif cfg.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=specials["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                            special_tokens=special_list)
    else:  # unigram, SentencePiece style: Metaspace, NFKC, whitespace runs collapsed
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
                                              + ([normalizers.Lowercase()] if cfg.lowercase else []))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=cfg.vocab_size, special_tokens=special_list,
                                          unk_token=specials["unk_token"], max_piece_length=16)
    return tok, trainer, specials, extra


def _post_processor(tok, cfg: TokenizerConfig, specials: dict):
    from tokenizers import processors

    if cfg.kind == "wordpiece":
        cls, sep = specials["cls_token"], specials["sep_token"]
        return processors.TemplateProcessing(single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
                                             special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    if cfg.kind == "unigram":
        eos = specials["eos_token"]
        return processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1",
                                             special_tokens=[(eos, tok.token_to_id(eos))])
    return tok.post_processor


def run_train_tokenizer(cfg: TokenizerConfig, corpus_dir: str | Path, output_dir: str | Path) -> dict:
    """Train on ``corpus_dir/corpus.jsonl`` (minus every ``heldout_every``-th doc), save to ``output_dir``.

    Returns:
        Stats: vocab_size, fertility and bytes_per_token (compression) on the held-out sample,
        unk_rate, and the number of training / held-out documents.
    """
    from transformers import PreTrainedTokenizerFast

    tok, trainer, specials, extra = build_tokenizer(cfg)
    every = cfg.heldout_every
    counts = {"train": 0}

    def train_docs() -> Iterator[str]:
        for i, text in enumerate(iter_corpus(corpus_dir)):
            if not _is_heldout(i, every):
                counts["train"] += 1
                yield text

    tok.train_from_iterator(train_docs(), trainer=trainer)
    if not counts["train"]:
        raise ValueError(f"{corpus_dir}/corpus.jsonl: no training documents")
    tok.post_processor = _post_processor(tok, cfg, specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=cfg.model_max_length,
                                   additional_special_tokens=extra or None, **specials)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(output_dir)

    heldout = [t for i, t in enumerate(iter_corpus(corpus_dir)) if _is_heldout(i, every)][: cfg.stats_docs]
    if not heldout:  # a corpus too small to hold one out: measure on the first training docs
        heldout = [t for _, t in zip(range(cfg.stats_docs), iter_corpus(corpus_dir), strict=False)]
    unk_id = tok.token_to_id(specials["unk_token"])
    words = tokens = nbytes = unk = 0
    for enc in tok.encode_batch(heldout, add_special_tokens=False):
        tokens += len(enc.ids)
        unk += sum(1 for i in enc.ids if i == unk_id)
    for text in heldout:
        words += len(text.split())
        nbytes += len(text.encode("utf-8"))
    return {"vocab_size": tok.get_vocab_size(), "fertility": tokens / max(words, 1),
            "bytes_per_token": nbytes / max(tokens, 1), "unk_rate": unk / max(tokens, 1),
            "train_docs": counts["train"], "heldout_docs": len(heldout)}
