"""The ``app`` eval suite: its spec, its data, its answer matching and a run on a real (tiny) model."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DEMO, REPO, write_jsonl
from shipyard.eval.app_suite import correct
from shipyard.eval.evaluate_config import EvalSpec, load_eval_spec

APPS = DEMO / "apps"
PROMPT = str(REPO / "pipelines/prompts/word-problems.yaml")


def _suite(**changes) -> dict:
    return {"name": "word", "kind": "app", "data": str(APPS / "word-problems.jsonl"), **changes}


def test_answers_match_by_value_or_by_their_words():
    assert correct("42", "42") and correct("42.0", "42") and correct("$1,320", "1320") and correct("It is 7", "7")
    assert not correct("41", "42") and not correct("7 or 8", "7") and not correct("", "42")
    assert correct("smtplib.", "smtplib") and correct("It is the smtplib module", "smtplib")
    assert correct("shutil.copy2", "copy2", ["shutil.copy2"]) and correct("PSF", "Python Software Foundation", ["PSF"])
    assert not correct("doctest unittest struct smtplib os shutil random hash", "smtplib")  # a list is no answer
    assert not correct("unittest", "doctest")


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**9, 10**9), st.text(min_size=1, max_size=40))
def test_a_reference_always_matches_itself_and_never_a_different_number(n, text):
    assert correct(str(n), str(n)) and correct(f"{n:,}", str(n)) and not correct(str(n + 1), str(n))
    from shipyard.eval.metrics import normalize_answer

    if normalize_answer(text):  # text with words in it (punctuation alone normalizes to nothing)
        assert correct(text, text)


def test_the_spec_checks_what_each_app_needs():
    spec = EvalSpec(suites=[_suite(apps=["direct", "fewshot", "react"], prompt=PROMPT, tools=["calculate"])])
    names = spec.suites[0].metric_names()
    assert "direct_accuracy" in names and "react_ms" in names and "fewshot_gain" in names
    assert "direct_gain" not in names  # the first app is the baseline
    for bad, match in ((_suite(apps=["fewshot"]), "fewshot app needs a prompt"),
                       (_suite(tools=["lookup"]), "lookup reads the last search"),
                       (_suite(apps=["cot", "cot"]), "repeats"), (_suite(apps=["magic"]), "apps.0"),
                       (_suite(temperature=1), "Extra inputs"),
                       (_suite(apps=["fewshot"], prompt=PROMPT, select="similar"), "similar needs k"),
                       (_suite(apps=["fewshot"], prompt=PROMPT, examples=str(APPS / "word-problems.jsonl")),
                        "examples must not be the suite's own data")):
        with pytest.raises(ValueError, match=match):
            EvalSpec(suites=[bad])
    spec.check_metric("m.word.fewshot_gain", ("m",))
    with pytest.raises(ValueError, match="not 'cot_accuracy'"):
        spec.check_metric("m.word.cot_accuracy", ("m",))


def test_a_prompt_file_resolves_against_the_spec_and_is_a_data_path(tmp_path):
    import yaml

    (tmp_path / "q.jsonl").write_text('{"question": "1+1?", "answer": 2}\n')
    (tmp_path / "p.yaml").write_text((REPO / "pipelines/prompts/word-problems.yaml").read_text())
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"suites": [
        {"name": "w", "kind": "app", "data": "q.jsonl", "apps": ["fewshot"], "prompt": "p.yaml"},
        {"name": "r", "kind": "app", "data": "q.jsonl", "apps": ["fewshot"], "prompt": "word-problems@production"}]}))
    spec = load_eval_spec(tmp_path / "spec.yaml", base=tmp_path)
    assert spec.suites[0].prompt == str(tmp_path / "p.yaml") and spec.suites[1].prompt == "word-problems@production"
    assert spec.data_paths()["evaluate.suites.0.prompt"] == str(tmp_path / "p.yaml")
    assert "evaluate.suites.1.prompt" not in spec.data_paths()  # a registry ref is no file


def test_the_shipped_problems_are_solved_by_their_own_programs_and_the_faq_holds_the_answers():
    from shipyard.apps import sandbox

    test, train = ([json.loads(line) for line in (APPS / f).read_text().splitlines()]
                   for f in ("word-problems.jsonl", "word-problems-train.jsonl"))
    assert len(test) == 200 and len(train) == 300
    assert not {r["question"] for r in test} & {r["question"] for r in train}  # no test row is trained on
    program = "\n".join(f"def p{i}():\n" + "\n".join("    " + line for line in r["program"].splitlines())
                        for i, r in enumerate(test + train))
    program += "\n" + "\n".join(f"p{i}()" for i in range(len(test + train)))
    printed = sandbox.run(program, timeout_s=20).stdout.split()
    assert printed == [r["answer"] for r in test + train]
    assert all(r["rationale"].endswith(f"Answer: {r['answer']}") for r in test + train)
    faq = {json.loads(line)["id"]: json.loads(line)["text"] for line in (DEMO / "rag/python-faq.jsonl").open()}
    questions = [json.loads(line) for line in (APPS / "python-faq-multihop.jsonl").open()]
    assert len(questions) >= 30
    for q in questions:
        assert q["sources"] and all(s in faq for s in q["sources"]), q
        words = [q["answer"], *q["aliases"]]
        if not q["answer"].lstrip("-").replace(".", "").isdigit() and q["answer"] != "PyInit_spam":
            assert any(w in faq[s] for s in q["sources"] for w in words), q  # the answer is in its sources


def test_a_bad_row_stops_the_suite_naming_its_line(tmp_path):
    from shipyard.eval.suites import load_suite_data

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "1+1?", "answer": 2}, {"question": "where?"},
                                               {"question": "x", "answer": "y", "aliases": "z"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'answer'.*and 1 more"):
        load_suite_data(EvalSpec(suites=[_suite(data=str(bad))]))


def test_the_apps_run_on_a_model_and_a_right_answer_counts(tiny_base, tmp_path):
    from shipyard.eval.evaluate import run_evaluate

    rows = [json.loads(line) for line in (APPS / "word-problems.jsonl").read_text().splitlines()[:3]]
    data = str(write_jsonl(tmp_path / "q.jsonl", rows))
    spec = EvalSpec(suites=[_suite(data=data, max_new_tokens=12, apps=["direct", "cot", "pal", "react", "fewshot"],
                                   prompt=PROMPT, k=1, max_steps=2, context_length=256),
                            _suite(name="near", data=data, apps=["fewshot"], prompt=PROMPT, k=2, select="similar",
                                   examples=str(APPS / "word-problems-train.jsonl"), max_new_tokens=4)])
    table = run_evaluate(spec, {"m": tiny_base}, tmp_path / "eval")["m"]
    assert table["near.fewshot_tokens"] > 0 and "near.fewshot_accuracy" in table  # the pool file, picked per row
    ci = json.loads((tmp_path / "eval" / "eval_ci.json").read_text())["m"]
    for app in ("direct", "cot", "pal", "react", "fewshot"):
        assert table[f"word.{app}_tokens"] > 0 and table[f"word.{app}_ms"] > 0, app
        assert 0 <= table[f"word.{app}_accuracy"] <= 1 and f"word.{app}_accuracy" in ci
    assert table["word.react_errors"] == 1.0  # a tiny model never writes finish[...] within 2 steps
    assert table["word.pal_gain"] == pytest.approx(table["word.pal_accuracy"] - table["word.direct_accuracy"])
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").open()]
    assert {s["app"] for s in samples} == {"direct", "cot", "pal", "react", "fewshot"}
    assert "[program]" in next(s for s in samples if s["app"] == "pal")["answer"]
    assert next(s for s in samples if s["app"] == "fewshot")["prompt_source"].endswith("word-problems.yaml")



def test_right_answers_count_per_app_and_gains_are_paired():
    """The suite's bookkeeping over a scripted chat: direct answers the odd rows right, PAL's programs all the
    rows (run in the real sandbox), ReAct calculates then finishes; errors and tokens are each app's own."""
    from shipyard.apps.reasoning import Reply
    from shipyard.eval.app_suite import AppRows, score_apps
    from shipyard.eval.evaluate_config import AppSuite

    rows = AppRows([{"question": f"What is {i} + {i}?", "answer": str(2 * i), "aliases": []} for i in range(6)])

    def chat(messages, max_tokens, stop):
        q = messages[-1]["content"]
        i = int(q.split("What is ")[-1].split(" ")[0])
        if "python block" in messages[0]["content"]:  # PAL
            return Reply(f"```python\nprint({i} + {i})\n```", 10, 5)
        if "Observation" in q:  # ReAct's second step: the sandbox's result is in the scratchpad
            return Reply(f" done\nAction: finish[{q.split('Observation: ')[-1].split()[0]}]", 20, 4)
        if "Action" in messages[0]["content"]:
            return Reply(f" add\nAction: calculate[{i} + {i}]", 20, 4)
        return Reply(f"It is {2 * i if i % 2 else 99}.", 8, 3)

    suite = AppSuite(name="s", kind="app", data="x", apps=["direct", "pal", "react"])
    got = score_apps(suite, rows, chat)
    m = got.metrics
    assert m["direct_accuracy"] == 0.5 and m["pal_accuracy"] == 1.0 and m["react_accuracy"] == 1.0
    assert got.rows["pal_gain"] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0] and m["pal_gain"] == 0.5
    assert m["direct_tokens"] == 11 and m["pal_tokens"] == 15 and m["react_tokens"] == 48
    assert m["direct_errors"] == m["pal_errors"] == m["react_errors"] == 0
    assert [s["app"] for s in got.samples] == ["direct", "direct", "pal", "pal", "react", "react"]
    assert "[action] calculate[1 + 1]" in got.samples[-1]["answer"]


def test_stop_strings_end_generation_at_the_same_token_on_both_engines(tiny_base, tiny_gguf):
    """The tiny model answers "The function" with "ssss...": a stop string ends it where its text appears, in
    llama.cpp's loop and in transformers' alike, and the stop string is not part of the answer."""
    from shipyard.models import gguf_model, inference
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.models.device import load_for_inference
    from shipyard.models.gguf import served_gguf

    tok = load_tokenizer(tiny_gguf)
    hf, _ = load_for_inference(tiny_gguf, "cpu")
    gg = gguf_model.GGUFModel(served_gguf(tiny_gguf), tiny_gguf)
    try:
        whole = inference.generate(hf, tok, ["The function"], 20)[0]
        assert whole == inference.generate(gg, tok, ["The function"], 20)[0] and len(whole) >= 6, whole
        stop = whole[:3]
        assert [inference.generate(m, tok, ["The function"], 20, stop=[stop, "never"])[0] for m in (hf, gg)] == ["", ""]
        ids = tok("The function", add_special_tokens=False)["input_ids"]
        new = gguf_model._greedy(gg.runtime, [ids], 20, tok.eos_token_id,
                                 lambda got: stop in tok.decode(got))[0]
        enc = tok(["The function"], return_tensors="pt", add_special_tokens=False)
        out = hf.generate(**enc, max_new_tokens=20, do_sample=False, stop_strings=[stop], tokenizer=tok,
                          pad_token_id=tok.pad_token_id)
        assert len(new) == out.shape[1] - len(ids) < 20  # both stopped early, at the same token
    finally:
        gg.close()


def test_the_shipped_traces_are_the_apps_own_prompts(tmp_path):
    """The committed files are what the generator writes today: a changed app prompt regenerates the traces."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_word_problems", REPO / "scripts/make_word_problems.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for name in ("word-problems.jsonl", "word-problems-train.jsonl", "app-traces-train.jsonl"):
        assert (tmp_path / name).read_bytes() == (APPS / name).read_bytes(), name
    from shipyard.data.sft_data import load_conversations

    rows, bad = load_conversations(APPS / "app-traces-train.jsonl")
    assert len(rows) == 900 and not bad


def test_shipyard_eval_runs_an_app_suite_with_a_registered_prompt(tiny_base, tmp_path):
    """`shipyard eval`: the prompt by NAME@ALIAS from the registry, and where it came from in timings.json."""
    import yaml
    from typer.testing import CliRunner

    from shipyard.apps.prompts import read_spec, register
    from shipyard.cli import app

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register(uri, read_spec(PROMPT), alias="production")
    rows = write_jsonl(tmp_path / "q.jsonl", [json.loads(line) for line in
                                              (APPS / "word-problems.jsonl").read_text().splitlines()[:2]])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"suites": [
        {"name": "word", "kind": "app", "data": str(rows), "apps": ["direct", "fewshot"],
         "prompt": "word-problems@production", "k": 1, "max_new_tokens": 6, "context_length": 256}]}))
    out = CliRunner().invoke(app, ["eval", str(tmp_path / "spec.yaml"), "--model", f"m={tiny_base}",
                                   "--output", str(tmp_path / "out"), "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    assert "word.fewshot_gain" in out.output
    assert json.loads((tmp_path / "out" / "timings.json").read_text())["prompts"] == {
        "word": "prompts:/word-problems/1"}
    missing = CliRunner().invoke(app, ["eval", str(tmp_path / "spec.yaml"), "--model", f"m={tiny_base}",
                                       "--output", str(tmp_path / "none"),
                                       "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert missing.exit_code == 2 and "prompts:/word-problems@production" in missing.output, missing.output
