import json

import pytest

from conftest import DEMO, REPO, write_jsonl
from shipyard.config import PipelineConfig, load_pipeline_config
from shipyard.eval.evaluate_config import EvalSpec, load_eval_spec
from shipyard.eval.metrics import bleu, chrf, exact_match, rouge
from shipyard.schema import ConfigError, parse_config
from shipyard.tracking.register import check_gate, gate_results
from shipyard.tracking.register_config import GateCheck

SPEC = {
    "max_examples": 3, "max_new_tokens": 4, "context_length": 128, "baseline": "base",
    "suites": [
        {"name": "heldout", "kind": "perplexity", "data": str(DEMO / "heldout/python-docs.jsonl")},
        {"name": "instructions", "kind": "generation", "data": str(DEMO / "instructions/test.jsonl")},
        {"name": "prefs", "kind": "reward", "data": str(DEMO / "preferences/test.jsonl")},
        {"name": "toxicity", "kind": "toxicity", "data": str(DEMO / "preferences/test.jsonl")},
        {"name": "cloze", "kind": "multiple_choice", "data": str(DEMO / "benchmarks/python-cloze.jsonl"),
         "max_examples": 6},
        {"name": "latency", "kind": "latency", "data": str(DEMO / "preferences/test.jsonl"),
         "max_examples": 2, "max_new_tokens": 4},
    ],
}


def test_overlap_metrics_known_values():
    assert rouge(["the cat sat"], ["the cat sat"]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge(["dog"], ["the cat sat"], ("rougeLsum",))["rougeLsum"] == 0.0
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert chrf(["the cat sat"], ["the cat sat"]) == pytest.approx(100.0)
    assert 0 < chrf(["the cats sat"], ["the cat sat"]) < 100
    # SQuAD normalization: case, punctuation and articles do not count
    assert exact_match(["The Cat, sat!", "a dog"], ["cat sat", "the cat"]) == 0.5


def test_gate_checks_absolute_and_against_the_champion():
    table = {"quantized": {"heldout.perplexity": 100.0, "heldout.perplexity_ratio": 1.01, "gen.rougeL": 0.2}}
    assert check_gate([GateCheck(metric="quantized.heldout.perplexity_ratio", max=1.05)], table) == []
    failures = check_gate([GateCheck(metric="quantized.gen.rougeL", min=0.3),
                           GateCheck(metric="aligned.prefs.reward", min=0.0)], table)
    assert failures == ["quantized.gen.rougeL=0.2 < min 0.3", "aligned.prefs.reward: not measured"]
    vs = [GateCheck(metric="quantized.gen.rougeL", min_vs_champion=-0.01),
          GateCheck(metric="quantized.heldout.perplexity", max=500, max_ratio_vs_champion=1.02)]
    first = gate_results(vs, table)  # no champion yet: the champion bounds are skipped, and say so
    assert [r["outcome"] for r in first] == ["skipped", "passed"] and "no champion" in first[0]["notes"][0]
    worse = {**table, "champion": {"gen.rougeL": 0.25, "heldout.perplexity": 90.0}}
    assert check_gate(vs, worse) == ["quantized.gen.rougeL=0.2 < champion 0.25 -0.01",
                                     "quantized.heldout.perplexity=100 > 1.02 x champion 90"]
    close = {**table, "champion": {"gen.rougeL": 0.205, "heldout.perplexity": 99.0}}
    assert check_gate(vs, close) == []
    with pytest.raises(ValueError, match="needs min, max"):
        GateCheck(metric="quantized.gen.rougeL")


def _profile(**changes) -> dict:
    import yaml

    data = yaml.safe_load((REPO / "pipelines/configs/ci-tiny.yaml").read_text())
    for key, value in changes.items():
        data[key] = value
    return data


def test_spec_errors_name_the_line_and_key(tmp_path):
    bad_kind = "suites:\n  - name: x\n    kind: bleurt\n    data: a.jsonl\n"
    with pytest.raises(ConfigError, match=r"spec.yaml:3: suites.0.kind: .*bleurt.*perplexity"):
        parse_config(EvalSpec, bad_kind, "spec.yaml")
    bad_metric = "suites:\n  - {name: g, kind: generation, data: a.jsonl, metrics: [rouge1, bertscore]}\n"
    with pytest.raises(ConfigError, match=r"spec.yaml:2: suites.0.generation.metrics.1"):
        parse_config(EvalSpec, bad_metric, "spec.yaml")
    dup = "suites:\n  - {name: a, kind: perplexity, data: x}\n  - {name: a, kind: latency, data: x}\n"
    with pytest.raises(ConfigError, match="unique"):
        parse_config(EvalSpec, dup, "spec.yaml")
    (tmp_path / "s.yaml").write_text("suites:\n  - {name: a, kind: perplexity, data: missing.jsonl}\n")
    with pytest.raises(ConfigError, match="suites.0.data: path does not exist: missing.jsonl"):
        load_eval_spec(tmp_path / "s.yaml", base=tmp_path)


def test_a_gate_on_an_unmeasured_metric_fails_at_load():
    data = _profile()
    data["register"]["gate"] = [{"metric": "optimized.heldout.rougeL", "max": 1}]
    with pytest.raises(ValueError, match=r"register.gate.0.metric: .*suite 'heldout' measures perplexity"):
        PipelineConfig.model_validate(data)
    data["register"]["gate"] = [{"metric": "optimized.nosuch.perplexity", "max": 1}]
    with pytest.raises(ValueError, match="no suite 'nosuch'"):
        PipelineConfig.model_validate(data)
    data["register"]["gate"] = [{"metric": "alignment.happiness", "min": 1}]
    with pytest.raises(ValueError, match="the align stage reports"):
        PipelineConfig.model_validate(data)
    data["register"]["gate"] = [{"metric": "student.heldout.perplexity", "max": 1}]
    with pytest.raises(ValueError, match="unknown model 'student'"):
        PipelineConfig.model_validate(data)
    assert load_pipeline_config(REPO / "pipelines/configs/tiny-cpu.yaml", resolve_paths=False).register_.gate


def test_a_bad_reference_row_stops_before_any_model_loads(tmp_path):
    from shipyard.eval.evaluate import run_evaluate

    mc = write_jsonl(tmp_path / "mc.jsonl", [{"query": "2 + 2 =", "choices": [" 4", " 5"], "gold": 0},
                                             {"query": "1 + 1 =", "choices": [" 2", " 3"]}])
    spec = EvalSpec(suites=[{"name": "mc", "kind": "multiple_choice", "data": str(mc)}])
    with pytest.raises(ValueError, match=r"mc.jsonl:2: missing field 'gold'"):
        run_evaluate(spec, {"m": str(tmp_path / "no-model-here")}, tmp_path / "out")


def test_choice_logprobs_match_the_full_sequence_score(tiny_base):
    import torch

    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer
    from shipyard.models.inference import choice_logprobs

    model, tok = load_causal_lm(tiny_base), load_tokenizer(tiny_base)
    query, choices = "The Python language", [" is simple", " uses indentation for blocks"]
    got = choice_logprobs(model, tok, query, choices)
    for choice, value in zip(choices, got, strict=True):
        ctx = tok(query, add_special_tokens=False)["input_ids"]
        ids = tok(query + choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
        want = sum(logp[i - 1, ids[i]].item() for i in range(len(ctx), len(ids)))
        assert value == pytest.approx(want, abs=1e-4)


def test_batched_scores_with_a_shared_prefix_match_one_pair_at_a_time(tiny_base):
    """score_continuations batches by length, keeps logits only where scored and reuses the shared
    prefix's key/value cache: in fp32 each pair's score equals its own full-sequence forward."""
    import torch

    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer
    from shipyard.models.inference import _shared_prefix, score_continuations, tokenized_pair

    model, tok = load_causal_lm(tiny_base), load_tokenizer(tiny_base)
    shots = "Q: what is a list? A: a mutable sequence.\nQ: what is a tuple? A: an immutable sequence.\n"
    pairs = [(shots + f"Q: what is item {i}? A:", " a thing" * (1 + i % 4)) for i in range(11)]
    pairs.append(("A different start entirely", " and its end"))
    want = []
    for query, cont in pairs:
        seq, start = tokenized_pair(tok, query, cont, model.config.max_position_embeddings)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0], -1)
        want.append((sum(logp[i - 1, seq[i]].item() for i in range(start, len(seq))), len(seq) - start))
    for batch_tokens in (4096, 40):  # one batch; many small ones
        got = score_continuations(model, tok, pairs, max_batch_tokens=batch_tokens)
        assert [n for _, n in got] == [n for _, n in want]
        assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-4)
    shared = score_continuations(model, tok, pairs[:-1], min_shared=1)  # every pair shares the shots
    assert [lp for lp, _ in shared] == pytest.approx([lp for lp, _ in want[:-1]], abs=1e-4)
    tokenized = [tokenized_pair(tok, q, c, 10_000) for q, c in pairs[:-1]]
    assert _shared_prefix([s for s, _ in tokenized], [b for _, b in tokenized]) >= 20
    assert score_continuations(model, tok, []) == []


def test_every_suite_runs_and_the_report_renders(tiny_base, tmp_path):
    import shutil

    from shipyard.eval.evaluate import run_evaluate

    twin = tmp_path / "twin"
    shutil.copytree(tiny_base, twin)
    short = [{"instruction": f"Name a number after {i}.", "response": f"{i + 1} comes after {i}."} for i in range(6)]
    test_rows, shots = write_jsonl(tmp_path / "q.jsonl", short[:3]), write_jsonl(tmp_path / "shots.jsonl", short[3:])
    fewshot = [  # the in-context baselines, measured on the base model alone, examples from another file
        {"name": "instructions_3shot", "kind": "generation", "data": str(test_rows), "num_fewshot": 3,
         "fewshot_data": str(shots), "models": ["base"], "metrics": ["answer_bpb", "rougeL"]},
        {"name": "instructions_0shot", "kind": "generation", "data": str(test_rows), "models": ["base"],
         "metrics": ["answer_bpb"]},
        {"name": "cloze_2shot", "kind": "multiple_choice", "data": str(DEMO / "benchmarks/python-cloze.jsonl"),
         "num_fewshot": 2, "fewshot_data": str(DEMO / "benchmarks/python-cloze.jsonl"), "models": ["base"],
         "max_examples": 6},
    ]
    with pytest.raises(ValueError, match="must not be the suite's own data"):
        EvalSpec.model_validate({**SPEC, "suites": SPEC["suites"] + fewshot})
    fewshot[2]["fewshot_data"] = str(DEMO / "instructions/train.jsonl")
    with pytest.raises(ValueError, match="train.jsonl.*no usable multiple-choice items"):  # names the file
        run_evaluate(EvalSpec.model_validate({**SPEC, "suites": fewshot[2:]}), {"base": tiny_base}, tmp_path / "x")
    fewshot.pop()
    spec = EvalSpec.model_validate({**SPEC, "suites": SPEC["suites"] + fewshot})
    table = run_evaluate(spec, {"base": tiny_base, "twin": twin}, tmp_path / "out", reward_model_dir=tiny_base,
                         sources={"twin": "base"}, reports={"pretraining": tiny_base / "pretraining.json"})
    # the pretrain stage's own row: held-out bits per byte beside its n-gram baselines, with intervals
    assert set(table["pretraining"]) == {"val_bpb", "unigram_bpb", "bigram_bpb", "val_tokens"}
    for out_file in ("eval.md", "report.html"):
        assert "unigram and bigram baselines" in (tmp_path / "out" / out_file).read_text()
    assert set(table["base"]) == {"heldout.perplexity", "heldout.bpb", "instructions.rouge1", "instructions.rouge2",
                                  "instructions.rougeL", "instructions.rougeLsum", "instructions.bleu",
                                  "instructions.chrf", "instructions.exact_match", "instructions.answer_bpb",
                                  "prefs.reward", "toxicity.rate", "toxicity.mean_probability", "cloze.acc",
                                  "cloze.acc_norm", "latency.ms_per_token", "latency.first_token_ms",
                                  "latency.tokens_per_s", "instructions_3shot.answer_bpb", "instructions_3shot.rougeL",
                                  "instructions_0shot.answer_bpb"}
    twin_scores = table["twin"]
    assert not any(k.startswith("instructions_3shot") for k in twin_scores)  # models: [base]
    # the examples change what the base model sees, so its reference bits per byte move
    assert table["base"]["instructions_3shot.answer_bpb"] != table["base"]["instructions_0shot.answer_bpb"]
    assert twin_scores["prefs.win_rate"] == 0.5  # the same weights: every prompt ties
    assert twin_scores["heldout.perplexity_ratio"] == pytest.approx(1.0)
    assert twin_scores["heldout.bpb_ratio"] == pytest.approx(1.0)
    rows = json.loads((tmp_path / "out" / "eval_rows.json").read_text())
    ci = json.loads((tmp_path / "out" / "eval_ci.json").read_text())
    assert len(rows["base"]["instructions.answer_bpb"]) == 3 and len(rows["twin"]["prefs.win_rate"]) == 3
    for key in ("heldout.perplexity", "heldout.bpb", "instructions.rougeL", "cloze.acc", "prefs.reward"):
        lo, hi = ci["base"][key]
        assert lo <= table["base"][key] + 1e-9 and table["base"][key] <= hi + 1e-9, key
    assert "instructions.bleu" not in ci["base"]  # corpus BLEU has no per-row scores: no interval claimed
    assert " [" in (tmp_path / "out" / "eval.md").read_text()  # the markdown table shows the intervals
    assert 1 < table["base"]["heldout.perplexity"] < 1200
    assert 0 <= table["base"]["cloze.acc"] <= 1 and table["base"]["latency.ms_per_token"] > 0
    out = tmp_path / "out"
    assert json.loads((out / "eval.json").read_text()) == table
    assert set(json.loads((out / "timings.json").read_text())["examples_per_s"]["base"]) == {
        s["name"] for s in SPEC["suites"] + fewshot}
    html = (out / "report.html").read_text()
    assert html.count("<img") == 8 and "95% CI" in html and "data:image/png;base64," in html and "diagnostic" in html
    assert "<script" not in html and "http" not in html.split("<body>")[1].split("Samples")[0]
    # one suite alone: the same code, only that suite's metrics
    alone = run_evaluate(spec.only(["cloze"]), {"base": tiny_base}, tmp_path / "alone")
    assert set(alone["base"]) == {"cloze.acc", "cloze.acc_norm"}


def test_fewshot_examples_come_before_the_question_and_never_from_the_test_rows(tmp_path):
    from shipyard.eval.suites import fewshot_examples, with_examples

    shots = write_jsonl(tmp_path / "shots.jsonl", [{"instruction": f"q{i}", "response": f"a{i}"} for i in range(4)])
    suite = EvalSpec.model_validate({"suites": [
        {"name": "g", "kind": "generation", "data": str(DEMO / "instructions/test.jsonl"), "num_fewshot": 2,
         "fewshot_data": str(shots)}]}).suites[0]
    examples = fewshot_examples(suite)
    assert [m["content"] for ex in examples for m in ex] == ["q0", "a0", "q1", "a1"]
    row = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the question"}]
    assert [m["content"] for m in with_examples(row, examples)] == ["be brief", "q0", "a0", "q1", "a1",
                                                                     "the question"]
    with pytest.raises(ValueError, match="needs fewshot_data"):
        EvalSpec.model_validate({"suites": [{"name": "g", "kind": "generation", "data": str(shots),
                                              "num_fewshot": 1}]})
    too_many = suite.model_copy(update={"num_fewshot": 9})
    with pytest.raises(ValueError, match="num_fewshot=9 but .* has 4 rows"):
        fewshot_examples(too_many)
