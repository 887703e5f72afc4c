"""The llama.cpp engine: a GGUF exported by llama.cpp's own tools scores text as the transformers model does, and
Shipyard's engine decoding it gives transformers' greedy tokens, alone, batched and joined mid-run."""

import shutil
import time

import pytest

from conftest import done_collector

pytestmark = pytest.mark.skipif(not __import__("shipyard.models.llamacpp", fromlist=["x"]).available(),
                                reason="libllama not built (make install builds it)")


@pytest.fixture(scope="module")
def gguf_dir(tiny_base, tmp_path_factory):
    from shipyard.models.gguf import export_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny"
    shutil.copytree(tiny_base, out)
    export_gguf(out, ["f32", "q8_0"], serve="f32")
    return out


@pytest.fixture(scope="module")
def both(gguf_dir):
    from shipyard.serving.llm import ShipyardLLM

    hf, lc = ShipyardLLM("tiny", gguf_dir, 8, engine="transformers"), ShipyardLLM("tiny", gguf_dir, 8)
    hf.load()
    lc.load()
    yield hf, lc
    hf.engine.close()
    lc.engine.close()


def _all_free(lc) -> bool:
    """The engine hands a finished row's sequence back just after its last event."""
    for _ in range(100):
        if sorted(lc.runtime.free) == list(range(lc.runtime.n_seq)):
            return True
        time.sleep(0.01)
    return False


PROMPTS = ["The Python", "A list of", "import", "Hello there, how", "def f(x):", "# a note"]


def test_export_writes_the_manifest_and_each_file_loads(gguf_dir):
    import json

    from shipyard.models.gguf import served_gguf
    from shipyard.models.llamacpp import LlamaRuntime

    manifest = json.loads((gguf_dir / "gguf" / "manifest.json").read_text())
    assert manifest["serve"] == "f32" and set(manifest["files"]) == {"f32", "q8_0"}
    assert manifest["sizes"]["q8_0"] < manifest["sizes"]["f32"]
    for kind in ("f32", "q8_0"):
        rt = LlamaRuntime(served_gguf(gguf_dir, kind), n_seq=1, n_ctx_seq=128)
        assert rt.vocab_size >= 600
        rt.close()
    with pytest.raises(ValueError, match="no 'q4_k_m' GGUF"):
        served_gguf(gguf_dir, "q4_k_m")


def test_f32_gguf_scores_text_as_the_transformers_model(gguf_dir):
    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer
    from shipyard.models.gguf import served_gguf
    from shipyard.models.inference import text_nll
    from shipyard.models.llamacpp import LlamaRuntime, gguf_text_nll

    tok, texts = load_tokenizer(gguf_dir), ["The Python language is a tool for people.", "import os\nprint(1)"]
    want = text_nll(load_causal_lm(gguf_dir).eval(), tok, texts, 64)
    rt = LlamaRuntime(served_gguf(gguf_dir), n_seq=1, n_ctx_seq=128)
    got = gguf_text_nll(rt, tok, texts, 64)
    rt.close()
    for (nw, cw), (ng, cg) in zip(want, got, strict=True):
        assert cg == cw and ng == pytest.approx(nw, rel=1e-4)


def test_auto_picks_llamacpp_for_a_gguf_on_the_cpu(both, tiny_base):
    from shipyard.models.engines import choose_engine

    hf, lc = both
    assert (hf.engine_kind, lc.engine_kind) == ("transformers", "llamacpp")
    assert lc.dtype_name == "gguf-f32" and lc.context_length == 128
    assert choose_engine(tiny_base, "auto", "cpu", False) == ("transformers", None)
    assert choose_engine(lc.model_dir, "auto", "cpu", True)[0] == "transformers"  # adapters need transformers
    with pytest.raises(ValueError, match="no GGUF"):
        choose_engine(tiny_base, "llamacpp", "cpu", False)
    assert choose_engine(tiny_base, "vllm", "cpu", False) == ("vllm", None)  # asked for by name only
    with pytest.raises(ValueError, match="LoRA adapters need --engine transformers"):
        choose_engine(tiny_base, "vllm", "auto", True)


def test_greedy_tokens_equal_the_transformers_engine_alone_and_batched(both):
    from shipyard.serving.params import SamplingParams

    hf, lc = both
    want = [g.tokens for g in hf.generate_batch(PROMPTS, [SamplingParams(12)] * len(PROMPTS))]
    alone = [lc.generate(p, SamplingParams(12)).tokens for p in PROMPTS]
    together = [g.tokens for g in lc.generate_batch(PROMPTS, [SamplingParams(12)] * len(PROMPTS))]
    assert alone == want and together == want
    assert _all_free(lc)


def test_a_request_joins_the_running_llamacpp_batch(both):
    from shipyard.serving.engine import Job
    from shipyard.serving.params import SamplingParams

    hf, lc = both
    want = {p: hf.generate(p, SamplingParams(n)).tokens for p, n in [("The Python", 60), ("import", 4),
                                                                       ("A list of", 4)]}
    results, done, sink = done_collector(3)

    lc.engine.submit(Job(lc.encode("The Python"), SamplingParams(60), sink("The Python")))
    time.sleep(0.02)
    for p in ("import", "A list of"):
        lc.engine.submit(Job(lc.encode(p), SamplingParams(4), sink(p)))
    assert done.wait(60)
    assert results == want
    assert _all_free(lc)  # every sequence handed back


def test_logprobs_and_prompt_scoring_match_the_transformers_engine(both):
    from shipyard.serving.params import SamplingParams

    hf, lc = both
    p = SamplingParams(6, logprobs=3, prompt_logprobs=True)
    a, b = hf.generate("Hello there, how", p), lc.generate("Hello there, how", p)
    assert a.tokens == b.tokens
    for x, y in zip(a.logprobs + a.prompt_logprobs[1:], b.logprobs + b.prompt_logprobs[1:], strict=True):
        assert x.token == y.token and y.logprob == pytest.approx(x.logprob, abs=1e-3)
        assert [t for t, _ in x.top] == [t for t, _ in y.top]


def test_sampling_with_a_seed_repeats_and_stop_strings_cut(both):
    from shipyard.serving.params import SamplingParams

    _, lc = both
    p = SamplingParams(16, temperature=1.0, top_p=0.9, seed=7)
    assert lc.generate("The Python", p).tokens == lc.generate("The Python", p).tokens
    text = lc.generate("The Python", SamplingParams(16)).text
    stop = text.strip()[:3]
    if stop:
        cut = lc.generate("The Python", SamplingParams(16, stop=(stop,)))
        assert stop not in cut.text and cut.finish_reason == "stop"


def test_optimize_exports_and_measures_each_gguf(tiny_base, tmp_path):
    import json

    from shipyard.optimize.optimize import run_optimize
    from shipyard.optimize.optimize_config import OptimizeConfig

    cfg = OptimizeConfig(quantize=None, gguf={"types": ["f16", "q8_0"], "serve": "q8_0"}, report_docs=4,
                         context_length=64, latency_prompts=2, latency_tokens=4)
    heldout = tmp_path / "h.jsonl"
    heldout.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["The Python language.", "A list of things",
                                                                          "import os", "def f(x): return x"]))
    metrics = run_optimize(cfg, tiny_base, tmp_path / "out", heldout=heldout)
    report = json.loads((tmp_path / "out" / "optimize.json").read_text())
    steps = [r["step"] for r in report["steps"]]
    assert steps == ["source", "gguf f16", "gguf q8_0 (served)"]
    assert report["steps"][-1]["device"] == "cpu (llama.cpp)"
    assert 0.9 < metrics["perplexity_ratio"] < 1.1 and metrics["size_ratio"] < 1
    with pytest.raises(ValueError, match="gguf converts a float model"):
        OptimizeConfig(quantize={"method": "dynamic_int8"}, gguf={})


def test_a_gguf_generates_and_scores_as_the_transformers_model(gguf_dir):
    from shipyard.models import inference
    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer
    from shipyard.models.gguf_model import GGUFModel

    tok, hf = load_tokenizer(gguf_dir), load_causal_lm(gguf_dir).eval()
    model = GGUFModel(gguf_dir / "gguf" / "model-f32.gguf", gguf_dir, n_seq=4)
    try:  # six prompts: two decode groups of the four sequences, rows of different lengths stopping apart
        assert inference.generate(model, tok, PROMPTS, 12) == inference.generate(hf, tok, PROMPTS, 12)
        pairs = [(p, " the answer") for p in PROMPTS] + [("Q: 2+2?\nA:", " 4"), ("x", " y z")]
        for (lw, nw), (lg, ng) in zip(inference.score_continuations(hf, tok, pairs),
                                      inference.score_continuations(model, tok, pairs), strict=True):
            assert ng == nw and lg == pytest.approx(lw, rel=1e-4, abs=1e-3)
        assert model.config.max_position_embeddings == hf.config.max_position_embeddings
        with pytest.raises(ValueError, match="sampled generation from a GGUF"):
            inference.generate(model, tok, PROMPTS[:1], 4, temperature=0.7)
    finally:
        model.close()


def test_evaluate_measures_the_gguf_as_served(tiny_gguf, tmp_path):
    """auto: the directory with a GGUF is measured by llama.cpp, and its numbers are the f32 model's."""
    import json

    from test_eval import SPEC

    from shipyard.eval.evaluate import run_evaluate
    from shipyard.eval.evaluate_config import EvalSpec

    suites = [s for s in SPEC["suites"] if s["kind"] in ("perplexity", "generation", "multiple_choice", "latency")]
    spec = EvalSpec.model_validate({**SPEC, "baseline": None, "suites": suites})
    served = run_evaluate(spec, {"m": tiny_gguf}, tmp_path / "served")
    plain = run_evaluate(spec.model_copy(update={"engine": "transformers"}), {"m": tiny_gguf}, tmp_path / "hf")
    devices = {k: json.loads((tmp_path / k / "timings.json").read_text())["device"]["m"] for k in ("served", "hf")}
    assert devices == {"served": "cpu (llama.cpp f32)", "hf": "cpu"}
    assert "m on cpu (llama.cpp f32)" in (tmp_path / "served" / "eval.md").read_text()
    for key in ("heldout.perplexity", "instructions.rougeL", "instructions.answer_bpb", "cloze.acc"):
        assert served["m"][key] == pytest.approx(plain["m"][key], rel=1e-3), key
    answers = [[json.loads(line)["answer"] for line in open(tmp_path / k / "samples.jsonl")
                if '"instructions"' in line] for k in ("served", "hf")]
    assert answers[0] == answers[1] and answers[0]
    with pytest.raises(ValueError, match="has no GGUF"):
        run_evaluate(spec.model_copy(update={"engine": "llamacpp"}), {"m": tmp_path / "served"}, tmp_path / "x")
