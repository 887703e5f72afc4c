"""The prompt apps' loops: answers extracted, programs run in the real sandbox, ReAct tools and budgets.

The model is a script of replies here (what a model could write, good and bad), so each test pins one
behaviour of the loop; the sandbox, the prompts and the parsing are the real ones.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO
from shipyard.apps.prompts import read_spec
from shipyard.apps.reasoning import (
    AppAnswer,
    Reply,
    Tools,
    cot,
    direct,
    extract_answer,
    extract_program,
    fewshot,
    pal,
    react,
)
from shipyard.apps.sandbox import run

SANDBOX = run("print(1)").ok


class Script:
    """A chat function replaying ``replies`` and recording what it was asked."""

    def __init__(self, *replies: str):
        self.replies, self.asked = list(replies), []

    def __call__(self, messages, max_tokens, stop):
        self.asked.append((messages, max_tokens, stop))
        return Reply(self.replies.pop(0), prompt_tokens=10, completion_tokens=5)


@pytest.mark.parametrize("text, answer", [
    ("3 + 2 = 5. Answer: 5", "5"), ("so the answer is 1,234.", "1234"), ("Answer: $12.50\nAnswer: 13", "13"),
    ("It costs 7 dollars, then 9.", "9"), ("Answer: Paris.", "Paris"), ("no idea", "no idea"), ("", ""),
    ("The answer = -4", "-4"),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_direct_fewshot_and_cot_send_their_prompts_and_count_tokens():
    chat = Script("Answer: 4", "4 + 1 = 5. Answer: 5", "First 2 * 3 = 6, then 6 + 1 = 7.\nAnswer: 7")
    assert direct(chat, "2 + 2?").answer == "4"
    spec = read_spec(REPO / "pipelines" / "prompts" / "word-problems.yaml")
    shot = fewshot(chat, "4 + 1?", spec, k=2)
    assert shot.answer == "5" and len(chat.asked[1][0]) == 1 + 2 * 2 + 1
    assert chat.asked[1][0][-1]["content"] == "Question: 4 + 1?"
    thought = cot(chat, "2 * 3 + 1?")
    assert thought.answer == "7" and "step by step" in chat.asked[2][0][0]["content"]
    assert (thought.calls, thought.prompt_tokens, thought.completion_tokens) == (1, 10, 5)


def test_extract_program_takes_the_fenced_block_or_the_whole_reply():
    assert extract_program("Here:\n```python\nprint(2)\n```\nDone") == "print(2)"
    assert extract_program("```\nx = 1\nprint(x)") == "x = 1\nprint(x)"  # an unclosed block (max_tokens hit)
    assert extract_program("print(3)") == "print(3)"


@pytest.mark.skipif(not SANDBOX, reason="no sandbox here")
def test_pal_runs_the_program_in_the_sandbox_and_feeds_a_failure_back_once():
    ok = pal(Script("```python\neggs = 4 * 6\nprint(eggs)\n```"), "How many eggs in 4 boxes of 6?")
    assert (ok.answer, ok.error, ok.calls) == ("24", None, 1) and ok.steps[1].content == "24\n"
    chat = Script("```python\nprint(undefined_name)\n```", "```python\nprint(20 - 7)\n```")
    fixed = pal(chat, "20 - 7?")
    assert (fixed.answer, fixed.error, fixed.calls) == ("13", None, 2)
    assert "NameError" in chat.asked[1][0][-1]["content"]  # the error went back to the model
    hostile = pal(Script("```python\nimport os\nprint(open('/etc/passwd').read())\n```", "no code at all"), "x")
    assert hostile.answer == "" and hostile.error and [s.kind for s in hostile.steps] == ["program", "result"] * 2


def test_react_uses_tools_until_finish_and_returns_the_trace():
    docs = {"harbour": [("handbook.md#3", "The harbour opens at 6. Ships pay a fee of 40 euros. The fee doubles "
                                          "at night.")]}
    tools = Tools(search=lambda q: docs.get(q.strip().lower(), []))
    chat = Script("I should search.\nAction: search[harbour]",
                  "Thought: find the fee.\nAction: lookup[fee]",
                  "Thought: next mention.\nAction: lookup[fee]",
                  "Thought: night fee is double.\nAction: calculate[40 * 2]" if SANDBOX else "Action: finish[80]",
                  "Thought: done.\nAction: finish[80 euros]")
    res = react(chat, "What is the night fee at the harbour?", tools.as_dict())
    assert res.error is None and res.answer == "80 euros"
    observations = [s.content for s in res.steps if s.kind == "observation"]
    assert observations[0].startswith("[handbook.md#3] The harbour opens at 6.")
    assert observations[1:3] == ["Ships pay a fee of 40 euros.", "The fee doubles at night."]
    if SANDBOX:
        assert observations[3] == "80"
    assert all(stop == ["\nObservation:", "Observation:"] for _, _, stop in chat.asked)
    assert "Observation: The fee doubles at night." in chat.asked[-1][0][-1]["content"]  # the scratchpad grows


def test_react_tells_the_model_about_bad_actions_and_stops_at_the_budget():
    def broken(_):
        raise RuntimeError("index offline")

    chat = Script("I will guess.", "Action: fly[away]", "Action: search[x]", "Action: search[y]")
    res = react(chat, "q", {"search": broken}, max_steps=4)
    obs = [s.content for s in res.steps if s.kind == "observation"]
    assert obs[0].startswith("No action.") and obs[1].startswith("Unknown action 'fly'")
    assert obs[2] == "search failed: RuntimeError: index offline"
    assert res.error == "step budget of 4 spent without finish[...]" and res.answer == "" and res.calls == 4


def test_lookup_and_search_edge_cases():
    tools = Tools(search=lambda q: [])
    assert tools.lookup("x") == "Nothing to look in: search first."
    assert tools.search("   ") == "No results for '   '." and tools.search("q") == "No results for 'q'."
    assert set(Tools().as_dict()) == {"calculate"}  # no retriever: no search or lookup offered


@settings(max_examples=40, deadline=None)
@given(replies=st.lists(st.text(max_size=80) | st.sampled_from([
    "Action: finish[]", "Action: search[", "Action: [x]", "Action: lookup[a]]]", "Thought: Action: finish[ok]"]),
    min_size=3, max_size=3))
def test_any_model_output_ends_in_an_answer_or_an_error_never_an_exception(replies):
    tools = Tools(search=lambda q: [("d", q * 3)])
    res = react(Script(*replies), "q", {k: v for k, v in tools.as_dict().items() if k != "calculate"}, max_steps=3)
    finished = any(s.kind == "action" and s.content.startswith("finish[") for s in res.steps)
    assert isinstance(res, AppAnswer) and (res.error is None) == finished and res.calls <= 3
    assert isinstance(extract_answer("".join(replies)), str)


@pytest.mark.skipif(not SANDBOX, reason="the sandbox cannot run here")
def test_the_react_example_is_exactly_what_a_real_run_sends_and_gets():
    """A model that replays the example trajectory on the example's own question makes the same turns."""
    from shipyard.apps.reasoning import REACT_EXAMPLES, react_example

    tools = Tools().as_dict()  # calculate only
    example = react_example(tools)
    chat = Script(*[t["content"] for t in example if t["role"] == "assistant"])
    res = react(chat, REACT_EXAMPLES["calculate"][0], tools)
    assert res.answer == "11" and res.error is None
    assert [m[0][-1] for m in chat.asked] == [t for t in example if t["role"] == "user"]
    assert all(m[0][1:-1] == example for m in chat.asked)  # every call: system, the example, then its scratchpad
    assert react_example({"lookup": None}) == [] and "search[" in react_example({"search": 1})[1]["content"]
