"""The OpenAI surface beyond plain text: log-probs on both routes, echo with prompt scoring (what
lm-evaluation-harness's local-completions backend sends), token-id and batched prompts, content parts."""

import httpx
import pytest

from conftest import running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(engine_model):
    model, engine = engine_model
    with running_server(model, "--max-new-tokens", "8", *engine) as (port, name, _):
        yield port, name


@pytest.fixture(scope="module")
def local(tiny_base):
    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_base).eval(), load_tokenizer(tiny_base)


def _logprobs(model, ids: list[int]) -> list[float]:
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_echo_scores_token_prompts_as_the_model_does(server, local):
    """lm-evaluation-harness's loglikelihood request: token-id prompts, echo, logprobs=1, max_tokens=1."""
    port, name = server
    model, tok = local
    prompts = [tok("The Python language is", add_special_tokens=False)["input_ids"],
               tok("A list of things", add_special_tokens=False)["input_ids"]]
    r = httpx.post(f"http://127.0.0.1:{port}/openai/v1/completions", timeout=60,
                   json={"model": name, "prompt": prompts, "max_tokens": 1, "temperature": 0, "logprobs": 1,
                         "echo": True, "seed": 1234})
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    assert len(choices) == 2
    for ids, choice in zip(prompts, choices, strict=True):
        lp = choice["logprobs"]
        assert lp["token_logprobs"][0] is None and len(lp["tokens"]) == len(ids) + 1
        assert lp["token_logprobs"][1:len(ids)] == pytest.approx(_logprobs(model, ids), abs=1e-4)
        greedy = lp["token_logprobs"][-1]  # the one generated token, greedy: the most likely one
        assert greedy == pytest.approx(max(lp["top_logprobs"][-1].values()), abs=1e-6)
        assert choice["text"].startswith(tok.decode(ids, skip_special_tokens=True))
    scored_only = httpx.post(f"http://127.0.0.1:{port}/openai/v1/completions", timeout=60,
                             json={"model": name, "prompt": "The Python", "max_tokens": 0, "echo": True,
                                   "logprobs": 0})
    assert scored_only.status_code == 200 and scored_only.json()["usage"]["completion_tokens"] == 0
    assert httpx.post(f"http://127.0.0.1:{port}/openai/v1/completions",
                      json={"model": name, "prompt": "x", "max_tokens": 0}).status_code == 400


def test_chat_logprobs_follow_openais_layout_streamed_or_not(server):
    from openai import OpenAI

    port, name = server
    c = OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="x", max_retries=0)
    ask = dict(model=name, messages=[{"role": "user", "content": "Hello"}], max_tokens=5, temperature=0,
               logprobs=True, top_logprobs=3)
    reply = c.chat.completions.create(**ask)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for t in content:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert t.bytes == list(t.token.encode())
    streamed = [ch for ch in c.chat.completions.create(**ask, stream=True) if ch.choices and ch.choices[0].logprobs]
    assert [t.logprob for ch in streamed for t in ch.choices[0].logprobs.content] == \
        pytest.approx([t.logprob for t in content])
    plain = c.chat.completions.create(**{**ask, "logprobs": False, "top_logprobs": None})
    assert plain.choices[0].logprobs is None
    r = httpx.post(f"http://127.0.0.1:{port}/openai/v1/chat/completions",
                   json={**ask, "logprobs": False, "top_logprobs": 2})
    assert r.status_code == 400 and "top_logprobs" in r.text


def test_content_parts_and_the_developer_role_render_as_plain_messages(server):
    port, name = server
    url = f"http://127.0.0.1:{port}/openai/v1/chat/completions"
    base = {"model": name, "max_tokens": 6, "temperature": 0}
    text = httpx.post(url, json={**base, "messages": [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Hello there"}]}).json()
    parts = httpx.post(url, json={**base, "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}]}).json()
    assert parts["choices"][0]["message"] == text["choices"][0]["message"]
    assert parts["usage"] == text["usage"]
    image = httpx.post(url, json={**base, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]})
    assert image.status_code == 400


def test_several_prompts_and_choices_are_indexed_prompt_major(server):
    port, name = server
    r = httpx.post(f"http://127.0.0.1:{port}/openai/v1/completions", timeout=60,
                   json={"model": name, "prompt": ["The Python", "A list"], "n": 2, "max_tokens": 4,
                         "temperature": 0})
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert choices[0]["text"] == choices[1]["text"] and choices[2]["text"] == choices[3]["text"]  # greedy
    alone = httpx.post(f"http://127.0.0.1:{port}/openai/v1/completions",
                       json={"model": name, "prompt": "A list", "max_tokens": 4, "temperature": 0}).json()
    assert choices[2]["text"] == alone["choices"][0]["text"]


def _client(port):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="x", max_retries=0)


ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["answer", "n"], "additionalProperties": False}


def test_response_format_json_schema_is_enforced_streamed_or_not(server):
    import json

    import jsonschema

    port, name = server
    c = _client(port)
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": ANSWER}}
    for q in ("Is Python a language?", "Count to three", "Hello"):
        msg = [{"role": "user", "content": q}]
        reply = c.chat.completions.create(model=name, messages=msg, max_tokens=40, temperature=0, response_format=fmt)
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), ANSWER)
        chunks = c.chat.completions.create(model=name, messages=msg, max_tokens=40, temperature=0, stream=True,
                                           response_format=fmt)
        streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert streamed == reply.choices[0].message.content
    sampled = c.chat.completions.create(model=name, messages=msg, max_tokens=40, temperature=1.0, seed=3, n=3,
                                        response_format=fmt, logprobs=True)
    for choice in sampled.choices:
        jsonschema.validate(json.loads(choice.message.content), ANSWER)
        assert all(t.logprob <= 0 for t in choice.logprobs.content)


def test_response_format_json_object_and_bad_schemas(server):
    import json

    import httpx

    port, name = server
    c = _client(port)
    reply = c.completions.create(model=name, prompt="A JSON object:", max_tokens=60, temperature=0,
                                 extra_body={"response_format": {"type": "json_object"}})
    text = reply.choices[0].text
    assert text.startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    url = f"http://127.0.0.1:{port}/openai/v1/chat/completions"
    msg = [{"role": "user", "content": "Hi"}]
    for fmt in [{"type": "json_schema"}, {"type": "xml"},
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}},
                {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}]:
        r = httpx.post(url, json={"model": name, "messages": msg, "response_format": fmt}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["message"], (fmt, r.text)


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 12}},
                                                "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}}


@pytest.fixture(scope="module")
def long_server(long_base):
    """The tiny model with room for a tool preamble. transformers only: the forced call is the sampler's mask,
    which both engines share (response_format's tests run on both)."""
    with running_server(long_base, "--max-new-tokens", "8", "--engine", "transformers") as (port, name, _):
        yield port, name


def test_forced_tool_calls_parse_validate_and_stream(long_server):
    import json

    port, name = long_server
    c = _client(port)
    msg = [{"role": "user", "content": "What is the weather in Paris?"}]
    for choice, want in [("required", {"get_weather", "get_time"}),
                         ({"type": "function", "function": {"name": "get_time"}}, {"get_time"})]:
        reply = c.chat.completions.create(model=name, messages=msg, tools=[WEATHER, TIME], tool_choice=choice,
                                          max_tokens=80, temperature=0, parallel_tool_calls=False)
        ch = reply.choices[0]
        assert ch.finish_reason == "tool_calls" and len(ch.message.tool_calls) == 1, ch
        call = ch.message.tool_calls[0]
        assert call.type == "function" and call.function.name in want and call.id.startswith("call_")
        args = json.loads(call.function.arguments)
        assert set(args) == ({"city"} if call.function.name == "get_weather" else {"zone"})
        chunks = list(c.chat.completions.create(model=name, messages=msg, tools=[WEATHER, TIME], tool_choice=choice,
                                                max_tokens=80, temperature=0, parallel_tool_calls=False,
                                                stream=True))
        calls = [t for k in chunks if k.choices for t in (k.choices[0].delta.tool_calls or [])]
        assert [(t.function.name, t.function.arguments) for t in calls] == \
            [(call.function.name, call.function.arguments)]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # the call and its result go back in the conversation; tool_choice none answers in text
    history = [*msg, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": "UTC"}]
    again = c.chat.completions.create(model=name, messages=history, tools=[WEATHER, TIME], tool_choice="none",
                                      max_tokens=8, temperature=0)
    assert again.choices[0].message.tool_calls is None and isinstance(again.choices[0].message.content, str)
    auto = c.chat.completions.create(model=name, messages=msg, tools=[WEATHER], max_tokens=8, temperature=0)
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_bad_tool_requests_are_400(server):  # checked before any prompt is built
    import httpx

    port, name = server
    url = f"http://127.0.0.1:{port}/openai/v1/chat/completions"
    msg = [{"role": "user", "content": "Hi"}]
    for extra in [{"tool_choice": "required"}, {"tools": [WEATHER], "tool_choice": {"type": "function",
                                                                                      "function": {"name": "nope"}}},
                  {"tools": [WEATHER, WEATHER]}, {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
                  {"messages": [{"role": "tool", "content": "x"}]},
                  {"messages": [{"role": "assistant", "content": None, "tool_calls": [
                      {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}]:
        r = httpx.post(url, json={"model": name, "messages": msg, **extra}, timeout=30)
        assert r.status_code == 400, (extra, r.text)


def test_calls_are_parsed_only_when_they_parse_and_name_a_tool():
    from shipyard.serving.tools import ToolDef, parse_calls

    tools = [ToolDef(**WEATHER)]
    text = ('Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
            '<tool_call>{"name": "other", "arguments": {}}</tool_call><tool_call>{broken</tool_call>')
    content, calls = parse_calls(text, tools)
    assert [c["function"]["name"] for c in calls] == ["get_weather"] and content == "Sure."
    assert parse_calls("no calls here", tools) == ("no calls here", [])
