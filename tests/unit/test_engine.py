"""The transformers engine: what it decodes equals transformers' own greedy ``generate``, alone, batched and
joined mid-generation; log-probs are the model's; rows end on EOS, stop strings, limits, cancel and deadline."""

import time

import pytest

from conftest import done_collector


@pytest.fixture(scope="module")
def llm(tiny_base):
    from shipyard.serving.llm import ShipyardLLM

    m = ShipyardLLM("tiny", tiny_base, 8)
    m.load()
    yield m
    m.engine.close()


def _reference(llm, prompt: str, n: int) -> list[int]:
    import torch

    ids = llm.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = llm.model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=llm.tokenizer.pad_token_id,
                                 eos_token_id=llm.tokenizer.eos_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


PROMPTS = ["The Python", "A list of", "import", "Hello there, how", "def f(x):", "# a note"]


def test_greedy_tokens_equal_generate_alone_and_in_any_batch(llm):
    from shipyard.serving.params import SamplingParams

    want = [_reference(llm, p, 12) for p in PROMPTS]
    alone = [llm.generate(p, SamplingParams(12)).tokens for p in PROMPTS]
    together = [g.tokens for g in llm.generate_batch(PROMPTS, [SamplingParams(12)] * len(PROMPTS))]
    assert alone == want and together == want


def test_a_request_joins_a_running_batch_and_decodes_as_alone(llm):
    """Long rows run; short rows arrive mid-generation, join, finish first; all equal their lone decode."""
    from shipyard.serving.engine import Job
    from shipyard.serving.params import SamplingParams

    want_long = _reference(llm, "The Python", 60)
    results, done, sink = done_collector(4)
    seen_running = []

    llm.engine.submit(Job(llm.encode("The Python"), SamplingParams(60), sink("long")))
    deadline = time.monotonic() + 10
    while not llm.engine.running and time.monotonic() < deadline:  # a fixed sleep raced the tiny model's decode
        time.sleep(0.0005)
    for i, p in enumerate(PROMPTS[1:4]):
        seen_running.append(llm.engine.running)
        llm.engine.submit(Job(llm.encode(p), SamplingParams(5), sink(i)))
    assert done.wait(60)
    assert results["long"] == want_long
    assert [results[i] for i in range(3)] == [_reference(llm, p, 5) for p in PROMPTS[1:4]]
    assert max(seen_running) >= 1  # the short ones really arrived while the long one ran


def test_logprobs_are_the_models_and_prompt_scoring_matches_a_forward(llm):
    import torch

    from shipyard.serving.params import SamplingParams

    g = llm.generate("The Python", SamplingParams(4, logprobs=3, prompt_logprobs=True))
    ids = g.prompt_ids + g.tokens
    with torch.no_grad():
        logp = torch.log_softmax(llm.model(torch.tensor([ids])).logits[0].float(), -1)
    want = [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
    got = [e.logprob for e in g.prompt_logprobs[1:]] + [e.logprob for e in g.logprobs]
    assert g.prompt_logprobs[0].logprob is None and got == pytest.approx(want, abs=1e-4)
    for e in g.logprobs:  # greedy: the chosen token is the top one; three alternatives, best first
        assert len(e.top) == 3 and e.top[0][0] == e.token and e.top[0][1] >= e.top[1][1] >= e.top[2][1]


def test_rows_end_on_stop_strings_limits_cancel_and_deadline(llm):
    from shipyard.serving.engine import Job
    from shipyard.serving.params import SamplingParams

    full = llm.generate("The Python", SamplingParams(16, temperature=1.0, seed=3))
    again = llm.generate("The Python", SamplingParams(16, temperature=1.0, seed=3))
    assert full.tokens == again.tokens  # a seeded sample repeats
    stop = full.text[3:5]
    cut = llm.generate("The Python", SamplingParams(16, temperature=1.0, seed=3, stop=(stop,)))
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"
    assert llm.generate("The Python", SamplingParams(3)).finish_reason == "length"
    events = []
    job = Job(llm.encode("The Python"), SamplingParams(10_000 // 100), lambda k, p: events.append(k))
    job.cancel.set()
    llm.engine.submit(job)
    late = Job(llm.encode("The Python"), SamplingParams(100), lambda k, p: events.append((k, type(p).__name__)),
               deadline=time.monotonic() - 1)
    llm.engine.submit(late)
    time.sleep(0.5)
    assert events == [("error", "TimeoutError")]  # the cancelled job said nothing; the late one timed out
    assert llm.engine.running == 0 and llm.engine.depth == 0


@pytest.mark.parametrize("extreme", [dict(temperature=1e-300), dict(temperature=2.0, top_p=1e-300),
                                     dict(temperature=1.0, top_k=10**9), dict(repetition_penalty=1e-300),
                                     dict(repetition_penalty=10.0, temperature=2.0),
                                     dict(temperature=1.0, seed=2**200), dict(temperature=1.0, seed=-5),
                                     dict(frequency_penalty=2.0, presence_penalty=-2.0, temperature=0.5)])
def test_extreme_settings_still_give_tokens(llm, extreme):
    from shipyard.serving.params import SamplingParams

    g = llm.generate("The Python", SamplingParams(4, **extreme))
    assert 1 <= g.completion_tokens <= 4 and all(0 <= t < llm.vocab_size for t in g.tokens)
