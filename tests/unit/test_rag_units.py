"""RAG pieces without servers: chunk windows, prompt augmentation within the context, tenants, pins."""

import pytest

from shipyard.features.rag_index_config import RagIndexConfig
from shipyard.features.rag_prompt import augment
from shipyard.serving.local import choose_index
from shipyard.serving.rag import RagOptions, Rejected, tenant_of


def words(text: str) -> int:  # a stand-in tokenizer: one token per word
    return len(text.split())


def test_chunks_are_overlapping_token_windows_of_verbatim_text():
    from shipyard.features.embed import Embedder
    from shipyard.features.rag_index import chunk_text

    tok = Embedder().tokenizer
    text = " ".join(f"word{i}" for i in range(300))
    chunks = chunk_text(tok, text, 40, 10)
    assert all(c in text for c in chunks)
    sizes = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert max(sizes) <= 40 and chunks[-1].endswith("word299")
    first_tail = tok(chunks[0], add_special_tokens=False)["input_ids"][-10:]
    assert tok(chunks[1], add_special_tokens=False)["input_ids"][:10] == first_tail  # the overlap
    assert chunk_text(tok, "", 40, 10) == []


def test_config_rejects_bad_windows_and_names():
    with pytest.raises(ValueError, match="overlap_tokens 50 must be below chunk_tokens 40"):
        RagIndexConfig(index="faq", chunk_tokens=40, overlap_tokens=50)
    with pytest.raises(ValueError, match="index"):
        RagIndexConfig(index="Bad-Name")
    with pytest.raises(ValueError, match="chunk_tokens"):
        RagIndexConfig(index="faq", chunk_tokens=512)
    with pytest.raises(ValueError, match="extra"):
        RagIndexConfig(index="faq", chunk_size=3)


def test_augment_fits_sources_into_the_room_left_and_cuts_the_last():
    chunks = [{"chunk_id": f"t/d#{i}", "source": "d", "doc_id": "d", "score": 1 - i / 10,
               "text": " ".join(["w"] * 30)} for i in range(3)]
    room_for = lambda text: 130 - words(text)
    prompt, cites = augment("why?", chunks, words, room_for)
    assert [c["index"] for c in cites] == [1, 2, 3] and not any(c["truncated"] for c in cites)
    assert "[1] " in prompt and "[3] " in prompt and prompt.endswith("Question: why?")
    tight = lambda text: 70 - words(text)
    prompt, cites = augment("why?", chunks, words, tight)
    assert [c["truncated"] for c in cites] == [False, True] and words(cites[1]["text"]) < 30
    none = lambda text: 10 - words(text)
    assert augment("why?", chunks, words, none) == ("why?", [])


def test_tenant_comes_from_header_or_body_and_both_must_agree():
    assert tenant_of(None, {}) == "public"
    assert tenant_of(RagOptions(tenant="acme"), {}) == "acme"
    assert tenant_of(None, {"x-shipyard-tenant": "acme"}) == "acme"
    with pytest.raises(Rejected, match="differs"):
        tenant_of(RagOptions(tenant="acme"), {"x-shipyard-tenant": "globex"})
    with pytest.raises(Rejected, match="not a tenant name"):
        tenant_of(None, {"x-shipyard-tenant": "../x"})
    with pytest.raises(ValueError):
        RagOptions(tenant="a b")


def test_the_served_index_is_the_one_the_model_version_pins():
    assert choose_index(None, None) == (None, None)
    assert choose_index(None, "faq@2")[0] == "faq@2"  # pinned: RAG on with that version
    assert choose_index("faq", "faq@2")[0] == "faq@2"
    assert choose_index("faq@3", None)[0] == "faq@3"
    with pytest.raises(ValueError, match="pinned to faq@2"):
        choose_index("faq@3", "faq@2")
    with pytest.raises(ValueError, match="pinned to faq@2"):
        choose_index("docs", "faq@2")
    with pytest.raises(ValueError, match="expected NAME or NAME@VERSION"):
        choose_index("faq@x", None)
