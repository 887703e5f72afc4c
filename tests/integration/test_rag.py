"""RAG end to end on 127.0.0.1: ingest into Feast (milvus-lite) -> sidecar -> the LLM runtime cites sources."""

import json
import subprocess
import sys

import httpx
import pytest

from conftest import DEMO, free_port, running_server, write_jsonl

pytestmark = pytest.mark.integration

SECRET = "The globex reactor access code is purple-falcon-42."


@pytest.fixture(scope="module")
def rag_repo(tmp_path_factory):
    """Two tenants in one index: acme has two Python FAQ documents, globex a secret; one bad row each kind."""
    from shipyard.features.rag_index import run_ingest
    from shipyard.features.rag_index_config import RagIndexConfig

    faq = [json.loads(line) for line in (DEMO / "rag" / "python-faq.jsonl").read_text().splitlines()]
    docs = tmp_path_factory.mktemp("docs")
    write_jsonl(docs / "faq.jsonl", [
        {"id": faq[0]["id"], "text": faq[0]["text"][:3000], "tenant": "acme"},  # design FAQ: indentation
        {"id": faq[1]["id"], "text": faq[1]["text"][:3000], "tenant": "acme"},
        {"id": "ops", "text": SECRET + " Rotate it every Monday.", "tenant": "globex", "source": "globex-ops.md"},
        "{not json",
        {"id": "empty", "text": "  "},
        {"id": "x", "text": "bad tenant", "tenant": "../etc"},
    ])
    repo = tmp_path_factory.mktemp("feast")
    cfg = RagIndexConfig(index="faq", chunk_tokens=48, overlap_tokens=8)
    first = run_ingest(cfg, docs, repo)
    second = run_ingest(cfg, docs / "faq.jsonl", repo)
    return repo, first, second, faq


def test_ingest_writes_versions_to_feast_and_quarantines_bad_rows(rag_repo):
    from shipyard.features import store as fs
    from shipyard.features.embed import Embedder
    from shipyard.features.retrieve import FeastRetriever, Retriever

    repo, first, second, faq = rag_repo
    assert (first.version, second.version) == (1, 2) and first.chunks == second.chunks
    assert first.tenants["globex"] == 1 and first.tenants["acme"] > 10
    bad = [json.loads(line) for line in open(first.quarantine_path)]
    assert [(b["line"], b["reason"].split(":")[0]) for b in bad] == [(4, "invalid JSON"), (5, "key 'text'"),
                                                                    (6, "key 'tenant'")]
    assert all(b["file"].endswith("faq.jsonl") for b in bad)
    store = fs.open_store(repo)
    index, version, view = fs.resolve(store, "faq")
    assert (index, version, view.name) == ("faq", 2, "faq_v2")
    assert fs.resolve(store, "faq@1")[2].tags["shipyard.chunk_tokens"] == "48"
    rows = fs.read_version(store, view)
    acme = rows[rows.tenant == "acme"]
    # chunks are verbatim text of their document, in order, overlapping
    design = acme[acme.doc_id == faq[0]["id"]].text.tolist()
    assert all(c in faq[0]["text"] for c in design) and len(design) > 3
    with pytest.raises(LookupError, match="no version 9"):
        fs.resolve(store, "faq@9")
    with pytest.raises(LookupError, match="no versions"):
        fs.resolve(store, "other")
    # the FAISS indexes built from Feast's rows answer as Feast's own vector search does
    emb = Embedder()
    q = emb.embed(["Why does Python use indentation for grouping statements?"])[0]
    ours = Retriever(rows, index, version).search(q, "acme", 3)
    feast = FeastRetriever(store, view).search(q, "acme", 3)
    assert [h.chunk_id for h in ours] == [h.chunk_id for h in feast]
    assert ours[0].doc_id == faq[0]["id"] and "indentation" in ours[0].text
    assert all(h.chunk_id.startswith("acme/") for h in FeastRetriever(store, view).search(q, "acme", 50))


@pytest.fixture(scope="module")
def sidecar(rag_repo):
    from shipyard.serving.local import start_sidecar, stop

    repo, *_ = rag_repo
    port = free_port()
    proc = start_sidecar("faq", port, str(repo))
    yield port, proc
    stop(proc)


def test_sidecar_retrieves_per_tenant_only(sidecar):
    port, _ = sidecar
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{url}/readyz").status_code == 200
    info = httpx.get(f"{url}/v1/index").json()
    assert info["ref"] == "faq@2" and set(info["tenants"]) == {"acme", "globex"}
    r = httpx.post(f"{url}/v1/retrieve", json={"query": "Why is indentation used for grouping?", "tenant": "acme",
                                               "top_k": 3}).json()
    assert r["version"] == 2 and len(r["chunks"]) == 3 and "indentation" in r["chunks"][0]["text"]
    assert r["chunks"][0]["score"] >= r["chunks"][1]["score"] >= r["chunks"][2]["score"]
    # cross-tenant probe: acme asks for globex's secret, verbatim, and with every chunk it may see
    probe = httpx.post(f"{url}/v1/retrieve", json={"query": SECRET, "tenant": "acme", "top_k": 50}).json()
    assert probe["chunks"] and all(c["chunk_id"].startswith("acme/") for c in probe["chunks"])
    assert not any("purple-falcon" in c["text"] for c in probe["chunks"])
    own = httpx.post(f"{url}/v1/retrieve", json={"query": "access code", "tenant": "globex"}).json()
    assert [c["source"] for c in own["chunks"]] == ["globex-ops.md"]
    # filters, and bad input as 4xx with a body that names the problem
    only = httpx.post(f"{url}/v1/retrieve", json={"query": "Python", "tenant": "acme", "top_k": 50,
                                                  "filters": {"doc_id": "faq:extending.rst.txt"}}).json()
    assert only["chunks"] and {c["doc_id"] for c in only["chunks"]} == {"faq:extending.rst.txt"}
    for body, status, param in [({"query": "x", "tenant": "initech"}, 404, "tenant"),
                                ({"query": "x", "top_k": 0}, 400, "top_k"),
                                ({"query": ""}, 400, "query"),
                                ({"query": "x", "tenant": "acme", "filters": {"tenant": "globex"}}, 400, "filters"),
                                ({"query": "x", "tenant": "acme", "extra": 1}, 400, "extra")]:
        resp = httpx.post(f"{url}/v1/retrieve", json=body)
        assert resp.status_code == status and resp.json()["error"]["param"] == param, (body, resp.text)


def test_runtime_answers_with_citations_and_degrades_without_the_sidecar(tiny_base, rag_repo, tmp_path):
    import openai

    from shipyard.serving.local import start_sidecar, stop, stop_server, wait_ready

    repo, *_ = rag_repo
    rag_port, port = free_port(), free_port()
    side = start_sidecar("faq@2", rag_port, str(repo))
    proc = subprocess.Popen([sys.executable, "-m", "shipyard.serving", str(tiny_base), "--port", str(port),
                             "--max-new-tokens", "8", "--rag-url", f"http://127.0.0.1:{rag_port}"])
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models/{tiny_base.name}", proc, timeout=120)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="x", max_retries=0)
        ask = dict(model=tiny_base.name, max_tokens=8, temperature=0,
                   messages=[{"role": "user", "content": "Why does Python use indentation?"}])
        raw = c.chat.completions.with_raw_response.create(**ask, extra_headers={"X-Shipyard-Tenant": "acme"})
        reply = raw.parse()
        cites = reply.model_extra["citations"]
        assert raw.headers["x-shipyard-rag"] == "used" and raw.headers["x-shipyard-rag-index"] == "faq@2"
        assert cites and cites[0]["index"] == 1 and cites[0]["chunk_id"].startswith("acme/")
        assert "indentation" in cites[0]["text"]
        # the tiny model's 128-token context holds one source, cut to fit, and the prompt says so
        assert reply.usage.prompt_tokens + 8 <= 128
        plain = c.chat.completions.create(**ask, extra_body={"rag": {"enabled": False}})
        assert "citations" not in (plain.model_extra or {}) and plain.usage.prompt_tokens < reply.usage.prompt_tokens
        # tenancy through the runtime: globex's question only ever cites globex's chunks, acme's never them
        g = c.completions.create(model=tiny_base.name, prompt="What is the access code?", max_tokens=4,
                                 extra_body={"rag": {"tenant": "globex"}})
        assert [x["source"] for x in g.model_extra["citations"]] == ["globex-ops.md"]
        a = c.completions.create(model=tiny_base.name, prompt=SECRET, max_tokens=4,
                                 extra_body={"rag": {"tenant": "acme", "top_k": 20}})
        assert all(x["chunk_id"].startswith("acme/") for x in a.model_extra["citations"])
        # streaming: citations ride on the first event
        events = list(c.chat.completions.create(**ask, stream=True, extra_headers={"X-Shipyard-Tenant": "acme"}))
        assert events[0].model_extra["citations"][0]["chunk_id"] == cites[0]["chunk_id"]
        # client errors stay 4xx: an unknown tenant, a header and body that disagree
        with pytest.raises(openai.NotFoundError, match="initech"):
            c.chat.completions.create(**ask, extra_headers={"X-Shipyard-Tenant": "initech"})
        with pytest.raises(openai.BadRequestError, match="differs"):
            c.chat.completions.create(**ask, extra_headers={"X-Shipyard-Tenant": "acme"},
                                      extra_body={"rag": {"tenant": "globex"}})
        # the sidecar goes away: answers keep coming, without sources, with a warning header
        stop(side)
        raw = c.chat.completions.with_raw_response.create(**ask)
        assert raw.status_code == 200 and raw.headers["x-shipyard-rag"] == "degraded"
        assert "retrieval failed" in raw.headers["warning"] and "citations" not in (raw.parse().model_extra or {})
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "shipyard_rag_degraded_total 1.0" in metrics
    finally:
        stop(side)
        stop_server(proc)


def test_chain_and_react_apps_answer_over_the_tenants_documents(long_base, sidecar):
    """stuff / refine / map_reduce read the retrieved chunks (one step per document for refine and map_reduce),
    react's search tool asks the sidecar for the request's tenant only; both cite what they read."""
    port, _ = sidecar
    with running_server(long_base, "--max-new-tokens", "8", "--rag-url", f"http://127.0.0.1:{port}") as (
            srv, name, _):
        def ask(which, tenant="acme", question="Why does Python use indentation?", **extra):
            r = httpx.post(f"http://127.0.0.1:{srv}/openai/v1/chat/completions", timeout=120,
                           headers={"X-Shipyard-Tenant": tenant},
                           json={"model": f"{name}:{which}", "max_tokens": 8, "rag": {"top_k": 3}, **extra,
                                 "messages": [{"role": "user", "content": question}]})
            assert r.status_code == 200, r.text
            return r.json()

        for app, kinds in [("stuff", {"answer"}), ("refine", {"draft"}), ("map_reduce", {"extract", "answer"})]:
            body = ask(app)
            assert body["app"]["name"] == app and body["citations"], body
            assert all(c["chunk_id"].startswith("acme/") for c in body["citations"])
            assert kinds <= {s["kind"] for s in body["app"]["steps"]} | {"answer"}
            assert body["usage"]["prompt_tokens"] > 0 and body["app"]["calls"] >= 1
        assert ask("refine")["app"]["calls"] == len(ask("refine")["citations"])  # one draft per document
        probe = ask("react", question=SECRET, app={"max_steps": 3})  # the tiny model may or may not search
        assert not any("purple-falcon" in c["text"] for c in probe.get("citations", []))
        assert probe["app"]["calls"] <= 3
        own = ask("stuff", tenant="globex", question="What is the access code?")
        assert [c["source"] for c in own["citations"]] == ["globex-ops.md"]


def test_source_rails_judge_every_retrieved_chunk_before_the_prompt(tiny_base, sidecar, tmp_path):
    """A source rail that blocks everything (toxicity from probability 0) leaves no chunk to cite; a PII rail
    that only annotates keeps them and counts."""
    port, _ = sidecar
    strict = tmp_path / "strict.yaml"
    strict.write_text("guardrails:\n  rails:\n    - {detector: toxicity, at: [sources], threshold: 0.0}\n")
    ask = {"messages": [{"role": "user", "content": "Why does Python use indentation?"}], "max_tokens": 4}
    with running_server(tiny_base, "--rag-url", f"http://127.0.0.1:{port}", "--guardrails", str(strict)) as (
            srv, name, _):
        r = httpx.post(f"http://127.0.0.1:{srv}/openai/v1/chat/completions", json={"model": name, **ask},
                       headers={"X-Shipyard-Tenant": "acme"}, timeout=60)
        assert r.status_code == 200 and not r.json().get("citations"), r.text
        metrics = httpx.get(f"http://127.0.0.1:{srv}/metrics").text
        assert 'shipyard_guardrail_total{action="block",at="sources",rail="toxicity"}' in metrics


def test_a_server_without_rag_refuses_rag_requests(tiny_base):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    # plain route check without a sidecar: the request asks for RAG the server does not have
    from shipyard.serving.llm import ShipyardLLM
    from shipyard.serving.openai_api import openai_router

    llm = ShipyardLLM(tiny_base.name, tiny_base, 4)
    llm.load()
    app = FastAPI()
    app.include_router(openai_router(llm))
    resp = TestClient(app).post("/openai/v1/completions", json={"model": tiny_base.name, "prompt": "hi",
                                                                "rag": {"top_k": 2}})
    assert resp.status_code == 400 and "no RAG index" in resp.json()["error"]["message"]


def test_the_rag_eval_suite_searches_the_index_and_scores_answers_with_and_without_sources(tiny_base, rag_repo,
                                                                                          tmp_path):
    from shipyard.eval.evaluate import run_evaluate
    from shipyard.eval.evaluate_config import EvalSpec
    from shipyard.features import store as fs
    from shipyard.features.embed import Embedder
    from shipyard.features.retrieve import Retriever

    repo, _, _, faq = rag_repo
    indexed = {d["id"]: d["text"][:3000] for d in faq[:2]}  # what acme's documents hold
    questions = [json.loads(line) for line in (DEMO / "rag" / "python-faq-questions.jsonl").read_text().splitlines()]
    asked = [q for q in questions if q["question"] in indexed.get(q["source"], "")]
    assert len(asked) >= 3
    data = write_jsonl(tmp_path / "questions.jsonl", asked)
    spec = EvalSpec(context_length=128, suites=[{"name": "rag", "kind": "rag", "data": str(data), "tenant": "acme",
                                                 "top_k": 3}])
    table = run_evaluate(spec, {"base": tiny_base}, tmp_path / "eval", rag_index="faq@2", feast_repo=repo)
    m = {k.split(".", 1)[1]: v for k, v in table["base"].items()}
    print(f"\nrag suite on {len(asked)} questions: {m}")
    # the retrieval figures are the sidecar's search, recomputed here directly
    store = fs.open_store(repo)
    retriever = Retriever(fs.read_version(store, fs.resolve(store, "faq@2")[2]), "faq", 2)
    vecs = Embedder().embed([q["question"] for q in asked])
    ranks = [next((i + 1 for i, h in enumerate(retriever.search(v, "acme", 3)) if h.doc_id == q["source"]), None)
             for q, v in zip(asked, vecs, strict=True)]
    assert m["hit_rate"] == sum(r is not None for r in ranks) / len(asked) >= 0.5
    assert m["mrr"] == pytest.approx(sum(1 / r for r in ranks if r) / len(asked))
    assert 1 < m["answer_perplexity"] < 1e5 and 1 < m["answer_perplexity_rag"] < 1e5
    assert m["context_gain"] == pytest.approx(m["answer_perplexity"] / m["answer_perplexity_rag"])
    sample = json.loads((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()[0])
    assert sample["suite"] == "rag" and sample["prompt"].startswith("### Instruction:\nSources:\n[1] ")

    with pytest.raises(ValueError, match=r"suites \['rag'\] \(rag\) need a RAG index.*--rag-index"):
        run_evaluate(spec, {"base": tiny_base}, tmp_path / "none")
    other = EvalSpec(context_length=128, suites=[{"name": "rag", "kind": "rag", "data": str(data),
                                                  "tenant": "initech"}])
    with pytest.raises(ValueError,
                       match=r"tenant 'initech' has no documents in index faq@2 \(tenants: \['acme', 'globex'\]\)"):
        run_evaluate(other, {"base": tiny_base}, tmp_path / "tenant", rag_index="faq@2", feast_repo=repo)
    bad = write_jsonl(tmp_path / "bad.jsonl", [asked[0], {"question": "Where?", "answer": "There."}])
    spec_bad = EvalSpec(suites=[{"name": "rag", "kind": "rag", "data": str(bad)}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'source'"):
        run_evaluate(spec_bad, {"base": tiny_base}, tmp_path / "bad", rag_index="faq@2", feast_repo=repo)


def test_tenant_by_tenant_ingests_add_up_and_bad_bytes_are_quarantined(tmp_path):
    """Issue 22: each ingest used to replace the whole index (only the last tenant survived), and one latin-1
    row aborted the ingest naming no file or line; files of other types were skipped silently."""
    from shipyard.features import store as fs
    from shipyard.features.rag_index import run_ingest
    from shipyard.features.rag_index_config import RagIndexConfig

    repo, acme, globex = tmp_path / "feast", tmp_path / "acme", tmp_path / "globex"
    acme.mkdir()
    globex.mkdir()
    (acme / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "a1", "text": "Acme ships rockets."}).encode()
                                   + b"\n" + '{"id": "a2", "text": "caf\xe9 latin-1"}\n'.encode("latin-1")
                                   + json.dumps({"id": "a3", "text": "Acme sells anvils."}).encode() + b"\n")
    (acme / "table.csv").write_text("id,text\n")
    write_jsonl(globex / "g.jsonl", [{"id": "g1", "text": SECRET}])
    cfg = RagIndexConfig(index="t", chunk_tokens=48, overlap_tokens=8, tenant="acme")
    first = run_ingest(cfg, acme, repo)
    bad = [json.loads(line) for line in open(first.quarantine_path)]
    assert [(b["line"], b["reason"].split(":")[0]) for b in bad] == [(None, "unsupported file type '.csv' (ingest "
                                                                      "reads .jsonl, .txt, .md, .rst)"),
                                                                     (2, "invalid UTF-8")]
    assert first.documents == 2  # the BOM row and the third row
    run_ingest(RagIndexConfig(index="t", chunk_tokens=48, overlap_tokens=8, tenant="globex"), globex, repo)
    store = fs.open_store(repo)
    rows = fs.read_version(store, fs.resolve(store, "t")[2])
    assert sorted(set(zip(rows.tenant, rows.doc_id, strict=True))) == [("acme", "a1"), ("acme", "a3"),
                                                                        ("globex", "g1")]
    assert fs.resolve(store, "t")[2].tags["shipyard.carried_from"] == "t@1"
    write_jsonl(acme / "a.jsonl", [{"id": "a9", "text": "Acme now only makes springs."}])
    run_ingest(cfg, acme / "a.jsonl", repo)  # acme's documents are replaced, globex's kept
    rows = fs.read_version(store, fs.resolve(store, "t")[2])
    assert sorted(set(zip(rows.tenant, rows.doc_id, strict=True))) == [("acme", "a9"), ("globex", "g1")]
