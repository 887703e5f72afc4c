import pytest

from shipyard.data.train_tokenizer import run_train_tokenizer
from shipyard.data.train_tokenizer_config import TokenizerConfig


@pytest.mark.parametrize("kind,specials", [
    ("bpe", ["<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"]),
    ("wordpiece", ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"]),
    ("unigram", ["<pad>", "</s>", "<unk>", "<extra_id_0>", "<extra_id_1>"]),
])
def test_each_tokenizer_kind_trains_saves_and_reports_stats(kind, specials, tiny_corpus, tmp_path):
    from transformers import AutoTokenizer

    cfg = TokenizerConfig(kind=kind, vocab_size=800, extra_ids=2 if kind == "unigram" else 0, heldout_every=10)
    stats = run_train_tokenizer(cfg, tiny_corpus, tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert set(specials) <= set(tok.all_special_tokens)
    assert 300 < stats["vocab_size"] <= 800 and stats["heldout_docs"] > 10
    assert 1.0 < stats["fertility"] < 6 and 1.5 < stats["bytes_per_token"] < 8 and stats["unk_rate"] < 0.01
    text = "Return the number of items in a container."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text  # bpe: the prefix space comes off again
    first_last = tok.convert_ids_to_tokens([ids[0], ids[-1]])
    if kind == "wordpiece":
        assert first_last == ["[CLS]", "[SEP]"]
    if kind == "unigram":
        assert first_last[1] == "</s>"
    assert tok.chat_template


def test_bpe_tokenizes_a_text_s_first_word_like_any_other(tiny_corpus, tmp_path):
    """With the prefix space a word costs the same tokens at the start of a text as inside it."""
    from transformers import AutoTokenizer

    words = "Return number items container function"
    for prefix_space in (True, False):
        run_train_tokenizer(TokenizerConfig(vocab_size=800, add_prefix_space=prefix_space), tiny_corpus,
                            tmp_path / str(prefix_space))
        tok = AutoTokenizer.from_pretrained(tmp_path / str(prefix_space))
        first = [tok.tokenize(w) for w in words.split()]
        inner = [tok.tokenize("x " + w)[len(tok.tokenize("x")):] for w in words.split()]
        assert (first == inner) is prefix_space


def test_a_corpus_with_no_documents_is_a_clear_error(tmp_path):
    (tmp_path / "corpus.jsonl").write_text("")
    with pytest.raises(ValueError, match="no training documents"):
        run_train_tokenizer(TokenizerConfig(), tmp_path, tmp_path / "tok")
