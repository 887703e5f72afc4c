"""The cached word tokenizer gives datatrove's tokens and sentences, and the filter keeps datatrove's decisions."""

import importlib.util
import pickle
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipyard.data.word_tokenizer import CachedSpacyTokenizer

REPO = Path(__file__).resolve().parents[2]
WORDS = ["The", "harbour", "IS_ALPHA", "isn't", "U.S.", "e-mail", "3.14", "—", "...", "!!", "?", "naïve", "日本語",
         "http://example.org/a?b=1", "jane@example.org", ":-)", "(a)", "'", '"', "\t", "\n", "\n\n", "  ", "\u00a0"]
TEXTS = st.one_of(
    st.lists(st.sampled_from(WORDS) | st.text(max_size=8), max_size=60).map(" ".join),
    st.text(max_size=300),
)


@pytest.fixture(scope="module")
def reference():
    from datatrove.utils.word_tokenizers import SpaCyTokenizer

    tok = SpaCyTokenizer("en")
    for call in (tok.word_tokenize, tok.span_tokenize, tok.sent_tokenize):
        call("IS_ALPHA")  # datatrove's answer on this token changes after its first use in a process: take the later
    return tok


def _all(tok, text):
    return tok.word_tokenize(text), tok.span_tokenize(text), tok.sent_tokenize(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS, min_size=1, max_size=4), max_lexemes=st.sampled_from([1, 2_000, 50_000]))
def test_words_spans_and_sentences_equal_datatrove_spacy(reference, texts, max_lexemes):
    ours = CachedSpacyTokenizer("en", max_lexemes=max_lexemes, cache_size=2)
    for text in texts + texts[:1]:  # the repeat is answered from the result cache
        assert _all(ours, text) == _all(reference, text)


def test_a_tiny_vocabulary_bound_rebuilds_the_pipeline_and_pickling_keeps_the_settings(reference):
    from shipyard.data import word_tokenizer

    tok = CachedSpacyTokenizer("en", max_lexemes=1, cache_size=1)
    for text in ("One harbour.", "Two loaves of bread. Three?", "One harbour."):
        assert _all(tok, text) == _all(reference, text)
    assert tok.rebuilds >= 2
    tok.warm_up()
    assert len(word_tokenizer._PIPELINES["en"].vocab) > 0
    copy = pickle.loads(pickle.dumps(tok))
    assert (copy.language, copy.max_lexemes, copy.cache_size, copy.rebuilds) == ("en", 1, 1, 0)
    assert _all(copy, "A pickled copy. It works.") == _all(reference, "A pickled copy. It works.")


def _benchmark():
    spec = importlib.util.spec_from_file_location("shipyard_bench_data_filter", REPO / "benchmarks" / "data_filter.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_shipyard_keeps_and_drops_what_datatrove_does_on_the_shared_rules(tmp_path):
    bench = _benchmark()
    truth = bench.generate(tmp_path / "corpus", n_docs=500, shards=2, seed=3)
    dt = bench.run_datatrove(tmp_path / "corpus", tmp_path / "dt", workers=2)
    sy = bench.run_shipyard(tmp_path / "corpus", tmp_path / "sy", workers=2, steps=bench.SHARED_STEPS)
    assert len(dt["decisions"]) == 500 and truth["exact_copies"] > 5
    assert bench._decision_diff(dt["decisions"], sy["decisions"]) == []
    fates = {d.split()[0] for d in sy["decisions"].values()}
    assert fates == {"kept", *bench.SHARED_STEPS}, fates  # every rule decided something: the check is not vacuous
