"""The KServe ModelServer with Shipyard's LLM runtime, on 127.0.0.1, spoken to by the openai client."""

import httpx
import pytest
from conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tiny_base):
    from shipyard.demo import start_server, stop_server, wait_ready

    port = free_port()
    proc = start_server(str(tiny_base), port, "sqlite:///unused.db", max_new_tokens=8)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models/{tiny_base.name}", proc, timeout=120)
        yield port, tiny_base.name
    finally:
        stop_server(proc)


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
    assert [m.id for m in c.models.list().data] == [name]


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
    assert r.status_code == 422


def test_kserve_v1_predict_and_health(server):
    port, name = server
    assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").json() == {"ready": True}
    r = httpx.post(f"http://127.0.0.1:{port}/v1/models/{name}:predict",
                   json={"instances": ["Hello", {"prompt": "World", "max_tokens": 2}]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    bad = httpx.post(f"http://127.0.0.1:{port}/v1/models/{name}:predict", json={"inputs": 1})
    assert bad.status_code == 400
