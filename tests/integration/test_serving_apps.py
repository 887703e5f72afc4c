"""Prompt apps served as models (``NAME:APP``) through the openai client, on the tiny random model: the trace,
usage summed over the app's calls, streaming equal to the whole answer, conversation memory, the refusals."""

import httpx
import pytest

from conftest import running_server

pytestmark = pytest.mark.integration

PROMPT = "pipelines/prompts/word-problems.yaml"
EXAMPLES = "data/demo/apps/word-problems-train.jsonl"


@pytest.fixture(scope="module")
def server(long_base):
    with running_server(long_base, "--max-new-tokens", "12", "--app-prompt", PROMPT, "--app-examples", EXAMPLES,
                        "--memory-turns", "2") as (port, name, _):
        yield port, name


def _client(port):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="x", max_retries=0, timeout=120)


def _post(port, body):
    return httpx.post(f"http://127.0.0.1:{port}/openai/v1/chat/completions", json=body, timeout=120)


ASK = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples has he?"}]


@pytest.mark.parametrize("app", ["fewshot", "cot", "pal", "react"])
def test_each_app_answers_with_its_trace_and_the_summed_usage(server, app):
    port, name = server
    models = [m.id for m in _client(port).models.list()]
    assert models[0] == name and f"{name}:{app}" in models and f"{name}:stuff" not in models  # no --rag-url
    r = _post(port, {"model": f"{name}:{app}", "messages": ASK, "max_tokens": 12, "app": {"max_steps": 2}})
    assert r.status_code == 200, r.text
    body = r.json()
    trace = body["app"]
    assert trace["name"] == app and trace["steps"] and trace["calls"] >= 1
    assert all(s["kind"] and isinstance(s["content"], str) for s in trace["steps"])
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body["usage"]["completion_tokens"] <= 12 * trace["calls"]
    if app == "react":  # the random model never says finish: the step budget ends it, said in the error
        assert trace["error"] and trace["calls"] <= 2
    if app == "pal":  # the random model's program is run in the sandbox and its failure is a step
        assert any(s["kind"] in ("result", "error", "program") for s in trace["steps"])


def test_fewshot_picks_the_examples_most_like_the_question_from_the_pool(server):
    """--app-examples: 300 solved problems; with select similar, the 2 nearest fill the prompt instead of the
    prompt file's first 2 (another prompt length), and k=0 shows none."""
    port, name = server
    usage = {}
    for key, app in (("none", {"k": 0}), ("first", {"k": 2}), ("similar", {"k": 2, "select": "similar"})):
        r = _post(port, {"model": f"{name}:fewshot", "messages": ASK, "max_tokens": 4, "app": app})
        assert r.status_code == 200, r.text
        usage[key] = r.json()["usage"]["prompt_tokens"]
    assert usage["none"] < usage["first"] and usage["none"] < usage["similar"] and usage["similar"] != usage["first"]


def test_stream_sends_steps_then_the_same_answer(server):
    port, name = server
    ask = dict(model=f"{name}:cot", messages=ASK, max_tokens=12, extra_body={"app": {}})
    whole = _client(port).chat.completions.create(**ask)
    chunks = list(_client(port).chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    steps = [c.model_extra["app_step"] for c in chunks if c.model_extra.get("app_step")]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [s["kind"] for s in steps] == [s["kind"] for s in whole.model_extra["app"]["steps"]]
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert final and final[0].model_extra["app"]["name"] == "cot"


def test_a_conversation_remembers_its_turns_per_tenant(server):
    port, name = server
    first = _post(port, {"model": name, "messages": ASK, "max_tokens": 6, "conversation": "c-1"}).json()
    again = _post(port, {"model": name, "messages": ASK, "max_tokens": 6, "conversation": "c-1"}).json()
    assert again["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]  # the history was prepended
    other = httpx.post(f"http://127.0.0.1:{port}/openai/v1/chat/completions", timeout=120,
                       headers={"X-Shipyard-Tenant": "other"},
                       json={"model": name, "messages": ASK, "max_tokens": 6, "conversation": "c-1"}).json()
    assert other["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]  # another tenant's c-1 is empty
    app_turn = _post(port, {"model": f"{name}:cot", "messages": ASK, "max_tokens": 6, "conversation": "c-2"})
    assert app_turn.status_code == 200
    for _ in range(4):  # --memory-turns 2: the prompt stops growing
        last = _post(port, {"model": name, "messages": ASK, "max_tokens": 6, "conversation": "c-3"}).json()
    longest = _post(port, {"model": name, "messages": ASK, "max_tokens": 6, "conversation": "c-3"}).json()
    assert longest["usage"]["prompt_tokens"] <= last["usage"]["prompt_tokens"] + 20


@pytest.mark.parametrize(("body", "status"), [
    ({"model": "{name}:nope"}, 404),
    ({"model": "{name}", "app": {"k": 2}}, 400),
    ({"model": "{name}:cot", "tools": [{"type": "function", "function": {"name": "f"}}]}, 400),
    ({"model": "{name}:cot", "n": 2}, 400),
    ({"model": "{name}:stuff"}, 400),  # a chain needs --rag-url
    ({"model": "{name}:cot", "messages": [{"role": "assistant", "content": "hi"}]}, 400),
    ({"model": "{name}", "conversation": "bad id!"}, 400),
    ({"model": "{name}:cot", "app": {"max_steps": 0}}, 400),
    ({"model": "{name}:cot", "app": {"unknown": 1}}, 400),
    ({"model": "{name}:fewshot", "app": {"select": "similar"}}, 400),  # similar needs k
])
def test_what_an_app_cannot_do_is_refused_with_a_4xx(server, body, status):
    port, name = server
    body = {"messages": ASK, "max_tokens": 4, **body, "model": body["model"].format(name=name)}
    r = _post(port, body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_without_a_prompt_fewshot_is_refused_and_memory_can_be_off(tiny_base):
    with running_server(tiny_base, "--max-new-tokens", "4", "--memory-turns", "0") as (port, name, _):
        r = _post(port, {"model": f"{name}:fewshot", "messages": ASK})
        assert r.status_code == 400 and "app-prompt" in r.json()["error"]["message"]
        r = _post(port, {"model": name, "messages": ASK, "conversation": "c-1"})
        assert r.status_code == 400 and "memory" in r.json()["error"]["message"]
        assert _post(port, {"model": f"{name}:cot", "messages": ASK, "max_tokens": 4}).status_code == 200


def _cancelled(port) -> float:
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith("shipyard_cancelled_total "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture(scope="module")
def slow_base(long_base, tmp_path_factory):
    """long_base's tokenizer and chat template on a wider, deeper random model (~40M parameters): slow enough
    on a CPU that an app's calls outlast a short deadline on any machine."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model = tmp_path_factory.mktemp("slow") / long_base.name
    shutil.copytree(long_base, model)
    config = AutoConfig.from_pretrained(model)
    config.update({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 6,
                   "num_attention_heads": 12, "num_key_value_heads": 12, "head_dim": 64})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(model)
    return model


def test_an_app_is_bounded_by_one_deadline_its_capacity_and_its_client(slow_base):
    """--max-batch-size 1 --max-queue 1: two apps at a time. Long calls (600 tokens, react's 5 steps) outlast a
    2 s deadline (504); a third app meanwhile gets 429; a client that goes away stops its app's call at once."""
    import threading
    import time

    flags = ("--max-new-tokens", "600", "--max-batch-size", "1", "--max-queue", "1", "--request-timeout-s", "2")
    with running_server(slow_base, *flags) as (port, name, _):
        slow = {"model": f"{name}:react", "messages": ASK, "max_tokens": 600, "temperature": 1.0,
                "app": {"max_steps": 5}}
        started = time.monotonic()
        r = _post(port, slow)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error", r.text
        assert time.monotonic() - started < 8  # one deadline for all the calls, not one per call
        running = [threading.Thread(target=lambda: _post(port, slow), daemon=True) for _ in range(2)]
        for t in running:
            t.start()
        time.sleep(0.5)
        busy = _post(port, {**slow, "max_tokens": 4})
        assert busy.status_code == 429 and busy.json()["error"]["message"], busy.text
        for t in running:
            t.join(10)
        before = _cancelled(port)
        with pytest.raises(httpx.TimeoutException):  # a client that gives up after 0.3 s
            httpx.post(f"http://127.0.0.1:{port}/openai/v1/chat/completions", json=slow, timeout=0.3)
        deadline = time.monotonic() + 1.2  # well before the app's own 2 s deadline
        while _cancelled(port) == before:
            assert time.monotonic() < deadline, "the abandoned app's call kept running"
            time.sleep(0.05)
        after = _post(port, {**slow, "max_tokens": 2, "app": {"max_steps": 1}})
        assert after.status_code == 200, after.text
