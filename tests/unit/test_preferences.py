"""Human-feedback rows in three formats become pairs; bad rows are quarantined with file:line."""

import json

import pytest

from shipyard.data.preferences import load_preferences, load_prompts, ranking_pairs
from shipyard.templates import format_prompt


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_k_ranked_completions_give_k_choose_2_pairs():
    pairs = ranking_pairs(["a", "b", "c", "d"], [2, 1, 4, 3])
    assert len(pairs) == 4 * 3 // 2
    assert ("b", "a") in pairs and ("a", "d") in pairs and ("d", "c") in pairs
    assert all(c != r for c, r in pairs)
    assert len(ranking_pairs(["a", "b", "c"], [1, 1, 2])) == 2  # a tie gives no pair


def test_three_formats_load_into_pairs_with_the_chat_template(tmp_path):
    chat = {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}
    path = _write(tmp_path / "p.jsonl", [
        {"prompt": "Say hi", "chosen": "hi", "rejected": "no"},
        {"prompt": "Rank", "completions": ["best", "mid", "worst"], "ranks": [1, 2, 3]},
        chat,
        {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "A"}],
         "rejected": [{"role": "assistant", "content": "B"}]},
    ])
    rows, bad = load_preferences(path)
    assert bad == [] and len(rows) == 1 + 3 + 1 + 1
    assert rows[0] == {"prompt": format_prompt("Say hi"), "chosen": "hi", "rejected": "no", "source": f"{path.name}:1"}
    assert {(r["chosen"], r["rejected"]) for r in rows[1:4]} == {("best", "mid"), ("best", "worst"), ("mid", "worst")}
    assert rows[4]["prompt"] == format_prompt("Hi") and rows[4]["chosen"] == "Hello!"
    assert rows[5]["prompt"] == format_prompt("Q") and rows[5]["rejected"] == "B"


@pytest.mark.parametrize("row, reason", [
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "same text"),
    ({"prompt": "p", "chosen": "x"}, "needs chosen/rejected"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1]}, "2 completions but 1 ranks"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, 1]}, "same rank"),
    ({"prompt": "p", "completions": ["a"], "ranks": [1]}, "at least 2 completions"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": ["1", "2"]}, "ranks must be a list of integers"),
    ({"chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "x"}],
      "rejected": [{"role": "user", "content": "B"}, {"role": "assistant", "content": "y"}]}, "no shared prompt"),
    ({"chosen": [{"role": "robot", "content": "x"}], "rejected": []}, "chosen[0] needs role"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "missing or non-string key(s): prompt"),
])
def test_bad_rows_are_quarantined_with_line_and_reason(tmp_path, row, reason):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row, "{not json"])
    rows, bad = load_preferences(path)
    assert len(rows) == 1 and len(bad) == 2
    assert bad[0].source == f"{path.name}:2" and reason in bad[0].reason, bad[0].reason
    assert bad[1].source == f"{path.name}:3" and "invalid json" in bad[1].reason


def test_a_file_without_any_pair_names_the_first_problem(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "a"}])
    with pytest.raises(ValueError, match=r"no usable preference pairs \(1 quarantined, first: .*p.jsonl:1: chosen"):
        load_preferences(path)


def test_prompts_come_from_prompt_rows_or_preference_rows_deduplicated(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "A"}, {"prompt": "A", "chosen": "x", "rejected": "y"},
                                         {"prompt": "B", "completions": ["1", "2"], "ranks": [2, 1]},
                                         {"prompt": ""}, {"text": "no prompt"}])
    prompts, bad = load_prompts(path)
    assert prompts == [format_prompt("A"), format_prompt("B")]
    assert [b.source for b in bad] == [f"{path.name}:4", f"{path.name}:5"]


def test_the_shipped_demo_preferences_load_cleanly():
    from conftest import DEMO

    rows, bad = load_preferences(DEMO / "preferences/train.jsonl")
    assert bad == [] and len(rows) == 957
    assert rows[0]["prompt"].startswith("### Instruction:\nContinue the movie review that begins:")
