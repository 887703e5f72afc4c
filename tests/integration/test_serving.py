"""The KServe ModelServer with Shipyard's LLM runtime, on 127.0.0.1, spoken to by the openai client."""

import httpx
import openai
import pytest

from conftest import free_port, running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(engine_model):
    model, engine = engine_model
    with running_server(model, "--max-new-tokens", "8", *engine) as (port, name, _):
        yield port, name


def test_openai_chat_completions_and_models(server):
    from openai import OpenAI

    port, name = server
    c = OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="x", max_retries=0)
    reply = c.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hello"}],
                                      max_tokens=5, temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    assert 0 < reply.usage.completion_tokens <= 5 and reply.usage.prompt_tokens > 0
    again = c.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hello"}],
                                      max_tokens=5, temperature=0)
    assert again.choices[0].message.content == reply.choices[0].message.content  # greedy is deterministic
    comp = c.completions.create(model=name, prompt="The Python", max_tokens=4, n=2, temperature=0.9, seed=1)
    assert len(comp.choices) == 2 and comp.usage.completion_tokens <= 8
    assert [m.id for m in c.models.list().data] == [name, f"{name}:cot", f"{name}:pal", f"{name}:react"]  # and its apps
    raw = c.completions.with_raw_response.create(model=name, prompt="The Python", max_tokens=2, temperature=0)
    assert raw.parse().usage.completion_tokens <= 2
    timing = raw.headers["server-timing"]  # the engine's share of the wait: benchmarks/serving.py's overhead
    assert timing.startswith("engine;dur=") and 0 < float(timing.split("dur=")[1]) < 60_000
    with pytest.raises(openai.BadRequestError, match="exceeds the model's context"):  # a big body: in a thread
        c.completions.create(model=name, prompt="word " * 3000, max_tokens=2)


def _client(port):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="x", max_retries=0)


def test_streaming_matches_the_whole_answer(server):
    port, name = server
    c = _client(port)
    messages = [{"role": "user", "content": "Tell me about Python"}]
    whole = c.chat.completions.create(model=name, messages=messages, max_tokens=8, temperature=0)
    chunks = list(c.chat.completions.create(model=name, messages=messages, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == whole.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    comp = list(c.completions.create(model=name, prompt="The Python", max_tokens=6, temperature=0, stream=True, n=2))
    assert {ch.choices[0].index for ch in comp} == {0, 1}
    # the raw wire format: server-sent events ending with [DONE]
    with httpx.stream("POST", f"http://127.0.0.1:{port}/openai/v1/completions",
                      json={"model": name, "prompt": "Hi", "max_tokens": 3, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]"


def test_generation_controls(server, tiny_base):
    from shipyard.models.causal_lm import load_tokenizer

    port, name = server
    c = _client(port)
    base = dict(model=name, prompt="The Python", max_tokens=8, temperature=0)
    # a stop string cuts the text before it and ends the choice with "stop" (a seeded sample, so the
    # text is varied and known: the same seed draws the same tokens with or without the stop)
    for seed in range(20):
        sampled = dict(base, temperature=1.0, seed=seed, max_tokens=16)
        full = c.completions.create(**sampled).choices[0].text
        if len(full) >= 6:
            break
    assert len(full) >= 6, full
    stop = full[3:5]
    cut = c.completions.create(**sampled, stop=[stop]).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"
    streamed = list(c.completions.create(**sampled, stop=[stop], stream=True))
    assert "".join(ch.choices[0].text for ch in streamed) == cut.text
    assert streamed[-1].choices[0].finish_reason == "stop"
    # penalties change what greedy decoding picks once tokens repeat: fewer repeated tokens than without
    long = {**base, "max_tokens": 16}
    plain = c.completions.create(**long).choices[0].text
    penalized = c.completions.create(**long, frequency_penalty=2.0, presence_penalty=2.0).choices[0].text
    repeated = c.completions.create(**long, extra_body={"repetition_penalty": 10.0}).choices[0].text
    tok = load_tokenizer(tiny_base)

    def repeats(text: str) -> int:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return len(ids) - len(set(ids))

    assert repeats(plain) > 0, plain  # the tiny model loops when greedy: there is something to penalize
    assert repeats(penalized) < repeats(plain) and repeats(repeated) < repeats(plain), (plain, penalized, repeated)
    # the same seed repeats a sample
    a = c.completions.create(**{**base, "temperature": 1.0}, seed=7, extra_body={"top_k": 20}).choices[0].text
    b = c.completions.create(**{**base, "temperature": 1.0}, seed=7, extra_body={"top_k": 20}).choices[0].text
    assert a == b


def test_penalties_follow_openai_semantics():
    import torch

    from shipyard.serving.params import SamplingParams
    from shipyard.serving.sampling import penalized

    p = SamplingParams(4, frequency_penalty=0.5, presence_penalty=1.0)
    out = penalized(torch.zeros(6), p, torch.tensor([5]), torch.tensor([1, 2, 2]))  # prompt [5], generated [1, 2, 2]
    assert out.tolist() == [0.0, -1.5, -2.0, 0.0, 0.0, 0.0]  # token 5 is prompt: untouched
    ctrl = penalized(torch.tensor([2.0, -2.0, 1.0]), SamplingParams(4, repetition_penalty=2.0), torch.tensor([0]),
                     torch.tensor([1]))
    assert ctrl.tolist() == [1.0, -4.0, 1.0]  # CTRL: seen positive logits halve, seen negative ones double


def test_stop_strings_are_held_back_while_they_might_start():
    from shipyard.serving.engine import cut_at_stop, held_back

    assert cut_at_stop("abc END def", ("END",)) == ("abc ", True)
    assert held_back("abc E", ("END",)) == 1 and held_back("abc EN", ("END",)) == 2 and held_back("abc", ("END",)) == 0


def test_bad_requests_are_400_with_openai_bodies(server):
    port, name = server
    url = f"http://127.0.0.1:{port}/openai/v1/chat/completions"
    ok = {"model": name, "messages": [{"role": "user", "content": "hi"}]}
    cases = {
        "max_tokens": {**ok, "max_tokens": -1},
        "temperature": {**ok, "temperature": -0.5},
        "top_p": {**ok, "top_p": 0},
        "n": {**ok, "n": 99},
        "messages": {**ok, "messages": []},
        "stop": {**ok, "stop": ["a", "b", "c", "d", "e"]},
    }
    for param, body in cases.items():
        r = httpx.post(url, json=body)
        assert r.status_code == 400, (param, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error" and param in r.json()["error"]["param"]
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    huge = httpx.post(url, json={**ok, "max_tokens": 100_000})
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "max_tokens"


def test_limits_give_openai_style_errors(server):
    import openai

    port, name = server
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="exceeds the model's context length"):
        c.chat.completions.create(model=name, messages=[{"role": "user", "content": "word " * 400}], max_tokens=8)
    with pytest.raises(openai.NotFoundError, match="not found"):
        c.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    r = httpx.post(f"http://127.0.0.1:{port}/openai/v1/chat/completions",
                   json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_kserve_v1_predict_and_health(server):
    port, name = server
    assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").json() == {"ready": True}
    r = httpx.post(f"http://127.0.0.1:{port}/v1/models/{name}:predict",
                   json={"instances": ["Hello", {"prompt": "World", "max_tokens": 2}]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    bad = httpx.post(f"http://127.0.0.1:{port}/v1/models/{name}:predict", json={"inputs": 1})
    assert bad.status_code == 400


def _metric(port, name: str, labels: str = "") -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    for line in text.splitlines():
        if line.startswith(name + (labels or " ")) or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_concurrent_requests_are_batched_and_match_alone(server):
    from concurrent.futures import ThreadPoolExecutor

    port, name = server
    c = _client(port)
    prompts = ["The Python", "A list", "Hello there", "import", "def f", "class A", "x = 1", "# note"]
    alone = [c.completions.create(model=name, prompt=p, max_tokens=6, temperature=0).choices[0].text for p in prompts]
    steps_before = _metric(port, "shipyard_batch_size_count")
    lone_before = _metric(port, "shipyard_batch_size_bucket", '{le="1.0"}')
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: c.completions.create(model=name, prompt=p, max_tokens=6,
                                                                temperature=0).choices[0].text, prompts))
    steps = _metric(port, "shipyard_batch_size_count") - steps_before
    lone = _metric(port, "shipyard_batch_size_bucket", '{le="1.0"}') - lone_before
    assert lone < steps  # some decode steps ran several requests' sequences together
    assert together == alone  # left padding changes nothing in what greedy decoding picks
    assert _metric(port, "shipyard_requests_total", '{route="completions",status="200"}') >= 16
    assert _metric(port, "shipyard_tokens_total", '{kind="completion"}') > 0


@pytest.fixture(scope="module")
def tight_server(tiny_base):
    """One request at a time, a queue of one, and a 50 ms budget per request."""
    with running_server(tiny_base, "--max-new-tokens", "8", "--max-batch-size", "1", "--max-queue", "1",
                        "--request-timeout-s", "0.05") as server:
        yield server


def test_a_full_queue_is_429_and_a_slow_request_504(tight_server):
    from concurrent.futures import ThreadPoolExecutor

    port, name, _ = tight_server
    body = {"model": name, "prompt": "The Python", "max_tokens": 100, "temperature": 0}
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: httpx.post(f"http://127.0.0.1:{port}/openai/v1/completions", json=body,
                                                   timeout=30), range(6)))
    statuses = sorted(r.status_code for r in codes)
    assert 429 in statuses and 504 in statuses and all(s in (200, 429, 504) for s in statuses), statuses
    full = next(r for r in codes if r.status_code == 429).json()["error"]
    assert full["type"] == "rate_limit_error" and "queue limit (1 requests)" in full["message"]
    assert next(r for r in codes if r.status_code == 504).json()["error"]["type"] == "timeout_error"
    # n=3 with room for one: refused whole, and the choice already queued gives its place back
    many = httpx.post(f"http://127.0.0.1:{port}/openai/v1/completions", json={**body, "n": 3}, timeout=30)
    assert many.status_code == 429 and _metric(port, "shipyard_queue_depth") == 0


def test_sigterm_drains_in_flight_requests(tiny_base):
    import signal
    import subprocess
    import sys
    import threading
    import time

    from shipyard.serving.local import wait_ready

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "shipyard.serving", str(tiny_base), "--port", str(port)])
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models/{tiny_base.name}", proc, timeout=120)
        result = {}

        def slow():
            body = {"model": tiny_base.name, "prompt": "The Python", "max_tokens": 100, "n": 8, "seed": 1,
                    "temperature": 1.0}
            result["r"] = httpx.post(f"http://127.0.0.1:{port}/openai/v1/completions", json=body, timeout=60)
            result["done"] = time.perf_counter()

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.3)  # the request is in flight (8 seeded choices run one after another)
        signalled = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert result["r"].status_code == 200 and len(result["r"].json()["choices"]) == 8
        assert result["done"] > signalled  # it was still running when the signal came, and finished
        # uvicorn drains, then re-raises the signal it caught: the process ends "terminated by SIGTERM"
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):  # and takes no new requests
            httpx.get(f"http://127.0.0.1:{port}/v2/health/ready")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_lora_adapters_are_served_under_their_own_names(tiny_base, tmp_path):
    """Two adapters on one base: each request picks by `model`, concurrent requests do not mix."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from peft import LoraConfig, get_peft_model

    from shipyard.models.adapters import load_with_adapters
    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer
    from shipyard.serving.local import stop_server, wait_ready

    dirs = {}
    for i, task in enumerate(("summarize", "review")):
        torch.manual_seed(i)
        lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"])
        peft = get_peft_model(load_causal_lm(tiny_base), lora)
        with torch.no_grad():  # a fresh LoRA is a no-op (B = 0): give it weights that change the answers
            for n, p in peft.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        peft.save_pretrained(tmp_path / task)
        dirs[task] = tmp_path / task
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "shipyard.serving", str(tiny_base), "--port", str(port),
                             "--name", "base", "--adapter", f"summarize={dirs['summarize']}",
                             "--adapter", f"review={dirs['review']}"])
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models/base", proc, timeout=120)
        c = _client(port)
        assert [m.id for m in c.models.list().data][:3] == ["base", "summarize", "review"]
        ask = lambda model: c.completions.create(model=model, prompt="The Python", max_tokens=6,
                                                 temperature=0)
        served = {m: ask(m).choices[0].text for m in ("base", "summarize", "review")}
        with ThreadPoolExecutor(6) as pool:  # mixed concurrently: batches never mix adapters
            mixed = list(pool.map(lambda m: ask(m).choices[0].text, ["base", "summarize", "review"] * 2))
        assert mixed == [served[m] for m in ["base", "summarize", "review"] * 2]
        assert ask("review").model == "review"
        tok = load_tokenizer(tiny_base)
        local = load_with_adapters(tiny_base, dirs)
        ids = tok("The Python", return_tensors="pt", add_special_tokens=False)
        for name in ("summarize", "review"):
            local.set_adapter(name)
            with torch.no_grad():
                out = local.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
            assert served[name] == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert len(set(served.values())) == 3, served  # three different models answered
    finally:
        stop_server(proc)


def test_a_seq2seq_model_serves_the_same_routes(tiny_tokenizer, tmp_path):
    """T5: the prompt goes to the encoder; answers, streaming and limits behave as for a causal LM."""
    import subprocess
    import sys

    import openai
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.serving.local import stop_server, wait_ready

    tok = load_tokenizer(tiny_tokenizer)
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=16, num_layers=1,
                                             num_heads=2, n_positions=128, pad_token_id=tok.pad_token_id,
                                             eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id))
    t5.save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "shipyard.serving", str(tmp_path / "t5"), "--port", str(port),
                             "--name", "t5"])
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models/t5", proc, timeout=120)
        c = _client(port)
        got = c.completions.create(model="t5", prompt="summarize: The Python", max_tokens=6, temperature=0)
        ids = tok("summarize: The Python", return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = t5.eval().generate(**ids, max_new_tokens=6, do_sample=False)
        assert got.choices[0].text == tok.decode(out[0, 1:], skip_special_tokens=True)
        assert got.usage.completion_tokens == out.shape[1] - 1 and got.usage.prompt_tokens == ids["input_ids"].shape[1]
        streamed = c.chat.completions.create(model="t5", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                             temperature=0, stream=True)
        assert [ch.choices[0].finish_reason for ch in streamed][-1] in ("stop", "length")
        with pytest.raises(openai.BadRequestError, match="context length"):
            c.completions.create(model="t5", prompt="word " * 200, max_tokens=4)
    finally:
        stop_server(proc)
