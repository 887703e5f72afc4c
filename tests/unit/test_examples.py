"""Few-shot examples from a pool: the first k, or the k nearest to the question by the RAG embedder."""

import pytest

from conftest import DEMO, write_jsonl
from shipyard.apps.examples import ExamplePool
from shipyard.apps.prompts import Example, PromptSpec
from shipyard.apps.reasoning import Reply, fewshot

POOL = DEMO / "apps/word-problems-train.jsonl"


def test_similar_examples_are_the_nearest_by_meaning_and_first_keeps_file_order():
    pool = ExamplePool([Example(input=q, output="a") for q in (
        "The hall has 5 rows of 8 chairs.", "A train travels 60 km each hour.", "Ann shares 12 cookies with 3 friends.",
        "A box holds 6 eggs; how many eggs are in 4 boxes?")])
    assert [e.input for e in pool.pick("x", 2)] == [e.input for e in pool.examples[:2]]
    near = pool.pick("How far does a bus go in 3 hours at 50 km per hour?", 1, "similar")
    assert near[0].input.startswith("A train travels")
    assert pool.pick("eggs in crates", 2, "similar")[0].input.startswith("A box holds 6 eggs")
    assert pool.pick("q", 0, "similar") == [] and len(pool.pick("q", 99, "similar")) == 4


def test_a_pool_file_reads_both_row_shapes_and_a_bad_row_names_its_line(tmp_path):
    import json

    first = json.loads(POOL.read_text().splitlines()[0])
    pool = ExamplePool.from_file(POOL)
    assert len(pool.examples) == 300 and (pool.examples[0].input, pool.examples[0].output) == (
        first["question"], first["rationale"])
    mixed = ExamplePool.from_file(write_jsonl(tmp_path / "m.jsonl", [{"input": "i", "output": "o"},
                                                                     {"question": "q", "rationale": "r"}]))
    assert [(e.input, e.output) for e in mixed.examples] == [("i", "o"), ("q", "r")]
    with pytest.raises(ValueError, match=r"bad.jsonl:2: needs \{input, output\}"):
        ExamplePool.from_file(write_jsonl(tmp_path / "bad.jsonl", [{"input": "i", "output": "o"}, {"input": "i"}]))


def test_fewshot_sends_the_picked_examples_between_the_system_prompt_and_the_question():
    asked = []

    def chat(messages, max_tokens, stop):
        asked.append(messages)
        return Reply("Answer: 24")

    spec = PromptSpec(name="p", system="Solve.", template="Q: {{question}}",
                      examples=[Example(input="Ann has 3 apples.", output="3")])
    pool = ExamplePool.from_file(POOL)
    question = "A box holds 5 pens. How many pens are in 4 boxes?"
    res = fewshot(chat, question, spec, 2, pool=pool, select="similar")
    turns = asked[0]
    assert res.answer == "24" and turns[0] == {"role": "system", "content": "Solve."}
    assert turns[-1] == {"role": "user", "content": f"Q: {question}"} and len(turns) == 6
    assert all("box holds" in t["content"] for t in turns[1:5:2])  # the two nearest are box problems
    fewshot(chat, question, spec, 2)  # no pool: the prompt's own examples, as before
    assert asked[1][1]["content"] == "Ann has 3 apples."
