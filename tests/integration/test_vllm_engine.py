"""The vllm engine's client on the CPU: Shipyard's front with --engine vllm over an upstream that speaks vLLM's
OpenAI dialect (token-id prompts, ``return_tokens_as_token_ids``, echo with log-probs). Here the upstream is
Shipyard's own transformers server on the same tiny model, so every answer through the front must equal the
upstream's. On a GPU node the chart puts ``vllm serve`` there (helm/shipyard/ci/gpu-vllm-values.yaml); vLLM
itself has not run in this repository's tests (no GPU was lent to the session that built this)."""

import httpx
import openai
import pytest

from conftest import running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(tiny_base):
    with running_server(tiny_base, "--engine", "transformers", name="upstream") as (up, _, up_proc):
        url = f"http://127.0.0.1:{up}/openai/v1"
        with running_server(tiny_base, "--engine", "vllm", "--vllm-url", url, "--max-new-tokens", "8",
                            "--request-timeout-s", "30") as (port, name, _):
            yield {"front": port, "name": name, "upstream": up, "up_proc": up_proc}


def _c(port: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="x", max_retries=0)


def test_answers_equal_the_upstream_engines(pair):
    front, up, name = _c(pair["front"]), _c(pair["upstream"]), pair["name"]
    messages = [{"role": "user", "content": "Tell me about Python"}]
    a = front.chat.completions.create(model=name, messages=messages, max_tokens=6, temperature=0)
    b = up.chat.completions.create(model="upstream", messages=messages, max_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert (a.usage.prompt_tokens, a.usage.completion_tokens) == (b.usage.prompt_tokens, b.usage.completion_tokens)
    assert a.choices[0].finish_reason == b.choices[0].finish_reason
    kw = dict(prompt="The Python", max_tokens=5, temperature=0, logprobs=2)
    a, b = front.completions.create(model=name, **kw), up.completions.create(model="upstream", **kw)
    assert a.choices[0].text == b.choices[0].text
    assert a.choices[0].logprobs.token_logprobs == pytest.approx(b.choices[0].logprobs.token_logprobs, abs=1e-5)
    assert a.choices[0].logprobs.tokens == b.choices[0].logprobs.tokens  # named as text again by the front
    seeded = dict(prompt="The Python", max_tokens=6, temperature=1.0, seed=7, n=2)
    assert ([c.text for c in front.completions.create(model=name, **seeded).choices]
            == [c.text for c in up.completions.create(model="upstream", **seeded).choices])


def test_stream_echo_and_stop_strings(pair):
    front, name = _c(pair["front"]), pair["name"]
    whole = front.completions.create(model=name, prompt="The Python", max_tokens=8, temperature=0)
    streamed = list(front.completions.create(model=name, prompt="The Python", max_tokens=8, temperature=0,
                                             stream=True))
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == whole.choices[0].text
    text = whole.choices[0].text
    if len(text) > 2:  # a stop string taken from the greedy answer ends it there, as upstream
        stop = text[1:3]
        cut = front.completions.create(model=name, prompt="The Python", max_tokens=8, temperature=0, stop=[stop])
        assert cut.choices[0].text == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"
    body = {"prompt": "The Python language", "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": True}
    a = httpx.post(f"http://127.0.0.1:{pair['front']}/openai/v1/completions", json={"model": name, **body},
                   timeout=60).json()["choices"][0]["logprobs"]
    b = httpx.post(f"http://127.0.0.1:{pair['upstream']}/openai/v1/completions",
                   json={"model": "upstream", **body}, timeout=60).json()["choices"][0]["logprobs"]
    assert a["token_logprobs"][0] is None and a["tokens"] == b["tokens"]
    assert a["token_logprobs"][1:] == pytest.approx(b["token_logprobs"][1:], abs=1e-5)


def test_what_the_engine_cannot_do_is_a_clear_400(pair):
    front, name = _c(pair["front"]), pair["name"]
    with pytest.raises(openai.BadRequestError, match="not available on the vllm engine"):
        front.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                      response_format={"type": "json_object"})
    with pytest.raises(openai.BadRequestError, match="exceeds the model's context"):
        front.completions.create(model=name, prompt="word " * 200, max_tokens=4)


def test_a_start_without_upstream_fails_clearly(tiny_base):
    import subprocess
    import sys

    from conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    run = subprocess.run([sys.executable, "-m", "shipyard.serving", str(tiny_base), "--port", str(free_port()),
                          "--engine", "vllm", "--vllm-url", dead, "--vllm-wait-s", "1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and f"no model listed at {dead}/models within 1 s" in run.stderr


def test_an_upstream_that_goes_away_is_a_503_not_a_500(tiny_base):
    with running_server(tiny_base, "--engine", "transformers", name="upstream") as (up, _, up_proc):
        url = f"http://127.0.0.1:{up}/openai/v1"
        with running_server(tiny_base, "--engine", "vllm", "--vllm-url", url) as (port, name, _):
            c = _c(port)
            assert c.completions.create(model=name, prompt="The", max_tokens=2).usage.completion_tokens <= 2
            up_proc.terminate()
            up_proc.wait(30)
            for stream in (False, True):
                r = httpx.post(f"http://127.0.0.1:{port}/openai/v1/completions", timeout=60,
                               json={"model": name, "prompt": "The", "max_tokens": 2, "stream": stream})
                assert r.status_code == 503 and "vLLM engine" in r.json()["error"]["message"]
            assert c.models.list().data[0].id == name  # the front still answers


def test_a_client_gone_from_the_front_is_cancelled_upstream(pair):
    import time

    from test_serving_abuse import abandon_streams, cancelled_count

    before = cancelled_count(pair["upstream"])
    abandon_streams(pair["front"], pair["name"], 2)
    deadline = time.monotonic() + 10
    while cancelled_count(pair["upstream"]) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled_count(pair["upstream"]) == before + 2  # the front closed its upstream streams
    assert cancelled_count(pair["front"]) >= 2
