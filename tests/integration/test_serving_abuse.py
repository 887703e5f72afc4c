"""The runtime as a hostile client finds it: no 5xx for anything the schema accepts (property-based, every
numeric and string field at its extremes, streamed or not, OpenAI and KServe v1), errors that keep the
connection, a body limit, streams inside the queue and the timeout, and a port someone else holds."""

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import running_server

pytestmark = pytest.mark.integration

DOCUMENTED = {200, 400, 404, 413, 429, 503, 504}


@pytest.fixture(scope="module")
def server(engine_model):
    model, engine = engine_model
    with running_server(model, "--max-new-tokens", "4", "--max-body-kb", "64", *engine) as (port, name, _):
        yield port, name


def _edges(lo, hi, integer=False):
    eps = 1 if integer else 1e-9
    values = [lo, hi, lo - eps, hi + eps, 0, 1, -1]
    if not integer:
        values += [5e-324, 1e-300, 1e300, float("inf"), float("-inf"), float("nan"), 0.5]
    else:
        values += [2**63, -(2**63), 2**64, 10**30]
    return st.sampled_from(values)


TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\x00", "\ud800", "\U0010ffff" * 5, "<|im_end|>",
                                                        "a" * 5000]))
COMMON = {
    "max_tokens": st.one_of(st.none(), st.sampled_from([0, 1, 2, 3, 127, 128, 10**6, -1, 2**64])),
    "temperature": _edges(0, 2), "top_p": _edges(0, 1), "top_k": _edges(0, 10**6, True),
    "n": st.sampled_from([1, 2, 8, 9, 0]), "seed": st.one_of(st.none(), _edges(-(2**63), 2**64 - 1, True)),
    "frequency_penalty": _edges(-2, 2), "presence_penalty": _edges(-2, 2), "repetition_penalty": _edges(0, 10),
    "stop": st.one_of(st.none(), TEXT, st.lists(TEXT, max_size=5)), "stream": st.booleans(),
}


SCHEMA = st.recursive(
    st.sampled_from([{"type": "string"}, {"type": "integer", "minimum": 5, "maximum": 1}, {"type": "frob"}, {},
                     {"enum": []}, {"type": "string", "pattern": "("}, {"const": None}, {"type": "number"},
                     {"$ref": "#/nowhere"}, {"type": "string", "maxLength": 3}, True, False]),
    lambda kids: st.one_of(
        st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(TEXT, kids, max_size=3)},
                              optional={"required": st.lists(TEXT, max_size=2),
                                        "additionalProperties": st.booleans()}),
        st.fixed_dictionaries({"type": st.just("array"), "items": kids}),
        st.fixed_dictionaries({"anyOf": st.lists(kids, max_size=3)})), max_leaves=6)
RESPONSE_FORMAT = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
    optional={"json_schema": st.fixed_dictionaries({"name": st.sampled_from(["a", "bad name", ""]),
                                                    "schema": SCHEMA})})
TOOLS = st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "g", "bad name"])}, optional={"parameters": SCHEMA})}), max_size=2)
TOOL_CHOICE = st.sampled_from(["none", "auto", "required", {"type": "function", "function": {"name": "f"}}, "x"])


def _body(draw_fields: dict) -> dict:
    return {k: v for k, v in draw_fields.items() if v is not None}


def _post(port, path, body, stream):
    """(status, full body text): a stream is read to its end, so a stream cut mid-body fails here."""
    raw = json.dumps(body, allow_nan=True)  # NaN and Infinity as a careless client sends them
    with httpx.stream("POST", f"http://127.0.0.1:{port}{path}", content=raw, timeout=60,
                      headers={"content-type": "application/json"}) as r:
        text = "".join(r.iter_text())
    if stream and r.status_code == 200:
        assert text.rstrip().endswith("data: [DONE]"), text[-300:]
    return r.status_code, text


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=st.fixed_dictionaries({}, optional={**COMMON, "prompt": st.one_of(
    TEXT, st.lists(TEXT, max_size=3), st.lists(st.integers(-1, 10**6), max_size=6),
    st.lists(st.lists(st.integers(0, 700), max_size=4), max_size=3)),
    "echo": st.booleans(), "logprobs": st.sampled_from([None, 0, 1, 5, 20, 21, -1]),
    "response_format": RESPONSE_FORMAT}))
def test_completions_never_5xx(server, fields):
    port, name = server
    body = {"model": name, **_body(fields)}
    status, text = _post(port, "/openai/v1/completions", body, body.get("stream"))
    assert status in DOCUMENTED, (body, text[:500])


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]),
     "content": st.one_of(TEXT, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
                                         max_size=3))}), max_size=4)},
    optional={**COMMON, "logprobs": st.booleans(), "top_logprobs": st.sampled_from([None, 0, 3, 20, 21]),
              "response_format": RESPONSE_FORMAT, "tools": TOOLS, "tool_choice": TOOL_CHOICE,
              "parallel_tool_calls": st.booleans()}))
def test_chat_never_5xx(server, fields):
    port, name = server
    body = {"model": name, **_body(fields)}
    status, text = _post(port, "/openai/v1/chat/completions", body, body.get("stream"))
    assert status in DOCUMENTED, (body, text[:500])


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(instances=st.lists(st.one_of(TEXT, st.integers(), st.none(), st.fixed_dictionaries(
    {"prompt": st.one_of(TEXT, st.integers())},
    optional={"max_tokens": st.one_of(st.integers(-5, 200), st.text(max_size=3), st.floats(), st.booleans())})),
    max_size=4))
def test_kserve_v1_predict_never_5xx(server, instances):
    port, name = server
    r = httpx.post(f"http://127.0.0.1:{port}/v1/models/{name}:predict", timeout=60,
                   content=json.dumps({"instances": instances}), headers={"content-type": "application/json"})
    assert r.status_code in DOCUMENTED, (instances, r.text[:500])


def test_errors_keep_the_connection_and_big_bodies_get_413(server):
    port, name = server
    url = f"http://127.0.0.1:{port}/openai/v1/completions"
    ok = {"model": name, "prompt": "The Python", "max_tokens": 2}
    with httpx.Client(limits=httpx.Limits(max_connections=1)) as client:
        def local_port(r):
            return r.extensions["network_stream"].get_extra_info("client_addr")[1]

        first = client.post(url, json=ok)
        seen = {local_port(first)}
        for bad in ({**ok, "temperature": -1}, {**ok, "model": "nope"}, {**ok, "prompt": "x" * 70_000}):
            r = client.post(url, json=bad)
            assert r.status_code in (400, 404, 413) and "error" in r.json()
            seen.add(local_port(client.post(url, json=ok)))
        assert len(seen) == 1  # every request went over the one keep-alive connection
    big = httpx.post(url, content=b'{"model": "' + b"x" * 100_000 + b'"}', headers={"content-type": "application/json"})
    assert big.status_code == 413 and "--max-body-kb" in big.json()["error"]["message"]

    def chunks():
        for _ in range(100):
            yield b" " * 1024

    chunked = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413


@pytest.fixture(scope="module")
def tight_server(tiny_base):
    with running_server(tiny_base, "--max-batch-size", "1", "--max-queue", "1", "--request-timeout-s", "0.05") \
            as (port, name, _):
        yield port, name


def test_streams_count_against_the_queue_and_the_timeout(tight_server):
    from concurrent.futures import ThreadPoolExecutor

    port, name = tight_server
    body = {"model": name, "prompt": "The Python", "max_tokens": 120, "temperature": 0, "stream": True}
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: _post(port, "/openai/v1/completions", body, True), range(6)))
    statuses = [s for s, _ in results]
    assert 429 in statuses, statuses  # streams fill the queue like any request
    cut = [t for s, t in results if s == 200]
    assert all('"timeout_error"' in t for t in cut), cut  # past 50 ms a stream ends with an error event
    assert all(s in (200, 429, 504) for s in statuses)


def test_a_port_held_by_another_process_is_refused(tiny_base):
    import socket
    import subprocess
    import sys

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "shipyard.serving", str(tiny_base), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and f"127.0.0.1:{port} is already in use" in proc.stderr


def test_a_sidecar_ends_when_its_parent_is_killed(tmp_path):
    """SIGKILL to `shipyard serve` runs no finally: the sidecar's parent watch (and PDEATHSIG) still ends it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "from shipyard.serving.guards import die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import os, time; from shipyard.serving.guards import "
        "exit_with_parent; exit_with_parent(int(os.environ[\"P\"]), 0.1); time.sleep(60)'],"
        " env={**os.environ, 'P': str(os.getpid())}, preexec_fn=die_with_parent)\n"
        "print(child.pid, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its parent")


def cancelled_count(port: int) -> float:
    """The runtime's shipyard_cancelled_total (sequences stopped because their client went away)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("shipyard_cancelled_total"))


def abandon_streams(port: int, name: str, count: int) -> None:
    """``count`` streamed 120-token completions, each dropped (connection closed) after its first event."""
    for _ in range(count):
        with httpx.Client(timeout=30) as client, client.stream(
                "POST", f"http://127.0.0.1:{port}/openai/v1/completions",
                json={"model": name, "prompt": "The Python", "max_tokens": 120, "temperature": 0, "stream": True,
                      "stop": ["never-said"]}) as r:
            assert r.status_code == 200
            next(line for line in r.iter_lines() if line.startswith("data: "))


def test_a_client_that_goes_away_stops_its_generation(server):
    import time

    port, name = server
    before = cancelled_count(port)
    abandon_streams(port, name, 3)
    deadline = time.monotonic() + 10
    while cancelled_count(port) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled_count(port) == before + 3  # each one stopped in the engine, not decoded to the end
    assert httpx.post(f"http://127.0.0.1:{port}/openai/v1/completions", timeout=30,
                      json={"model": name, "prompt": "Hi", "max_tokens": 4}).status_code == 200
