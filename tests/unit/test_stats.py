"""The statistics every report and gate rests on: bootstrap intervals, paired differences, bits per byte."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipyard.eval.stats import bits_per_byte, bootstrap_ci, metric_ci, paired_diff_ci, point
from shipyard.tracking.register import gate_results, stage_rows
from shipyard.tracking.register_config import GateCheck


def test_bootstrap_interval_of_a_mean_matches_the_normal_theory():
    # 400 draws of N(3, 2^2): the mean's 95% interval is about 3 +- 1.96 * 2 / sqrt(400) = 3 +- 0.196
    x = np.random.default_rng(1).normal(3.0, 2.0, 400)
    lo, hi = bootstrap_ci(x)
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.03)
    assert hi == pytest.approx(x.mean() + 1.96 * se, abs=0.03)
    assert bootstrap_ci(x) == (lo, hi)  # seeded: the same rows give the same interval


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(200):  # Bernoulli(0.3), 100 rows: an accuracy
        lo, hi = bootstrap_ci(rng.random(100) < 0.3, n_resamples=500)
        covered += lo <= 0.3 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_interval_of_a_ratio_and_a_perplexity():
    rows = [[2.0, 1.0], [4.0, 3.0], [6.0, 4.0]]  # (nats, tokens): 12 / 8 nats per token
    assert point(rows) == pytest.approx(1.5)
    lo, hi = metric_ci("heldout.perplexity", rows)
    assert lo <= math.exp(1.5) <= hi and lo > 1  # perplexity = exp(nats / tokens), not a mean of rows
    assert metric_ci("instructions.answer_bpb", rows)[1] <= 2.0  # a ratio of sums is bounded by the row ratios


def test_paired_difference_sees_what_unpaired_intervals_hide():
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0, 1, 150)  # rows differ a lot from each other...
    base = difficulty + rng.normal(0, 0.05, 150)
    better = difficulty + 0.1 + rng.normal(0, 0.05, 150)  # ...and the candidate is 0.1 better on each
    (_, bhi), (clo, _) = bootstrap_ci(base), bootstrap_ci(better)
    assert clo < bhi  # the two intervals overlap: compared apart, no claim
    lo, hi = paired_diff_ci(better, base)
    assert 0.08 < lo < 0.1 < hi < 0.12  # paired, the gain is clear
    with pytest.raises(ValueError, match="same rows"):
        paired_diff_ci(better, base[:-1])


def test_a_difference_of_noise_straddles_zero():
    rng = np.random.default_rng(5)
    a, b = rng.random(60) < 0.5, rng.random(60) < 0.5
    lo, hi = paired_diff_ci(a, b)
    assert lo < 0 < hi


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
       st.floats(0.5, 0.99))
def test_an_interval_is_ordered_and_stays_within_the_rows(values, confidence):
    lo, hi = bootstrap_ci(values, confidence=confidence, n_resamples=200)
    slack = 1e-6 * (1 + max(abs(v) for v in values))
    assert min(values) - slack <= lo <= hi + slack and hi <= max(values) + slack
    if len(set(values)) == 1:
        assert lo == pytest.approx(values[0]) and hi == pytest.approx(values[0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50)), min_size=2, max_size=40))
def test_a_paired_difference_is_antisymmetric_and_zero_against_itself(pairs):
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    lo, hi = paired_diff_ci(a, b, n_resamples=200)
    rlo, rhi = paired_diff_ci(b, a, n_resamples=200)
    assert lo == pytest.approx(-rhi, abs=1e-9) and hi == pytest.approx(-rlo, abs=1e-9)
    assert paired_diff_ci(a, a, n_resamples=50) == (0.0, 0.0)


def test_bits_per_byte():
    # a uniform model over 256 byte values spends 8 bits per byte: ln(256) nats per byte
    assert bits_per_byte(10 * math.log(256), 10) == pytest.approx(8.0)
    # the same text under two tokenizers: 4 tokens of 2 nats or 2 tokens of 4 nats is the same bpb
    assert bits_per_byte(4 * 2.0, 12) == bits_per_byte(2 * 4.0, 12)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


def _table_and_rows(gain: float, n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = (rng.random(n) < 0.4).astype(float)
    fewshot = (rng.random(n) < 0.45).astype(float)
    tuned = np.clip(base + (rng.random(n) < gain), 0, 1)
    rows = {"base": {"task.acc": list(base)}, "fewshot": {"task.acc": list(fewshot)},
            "finetuned": {"task.acc": list(tuned)}}
    table = {m: {k: float(np.mean(v)) for k, v in r.items()} for m, r in rows.items()}
    return table, rows


def test_a_paired_gate_passes_a_real_gain_and_refuses_noise():
    check = GateCheck(stage="finetune", metric="finetuned.task.acc", vs=["base.task.acc", "fewshot.task.acc"],
                      min_diff=0.0)
    table, rows = _table_and_rows(gain=0.5)
    [res] = gate_results([check], table, rows)
    assert res["outcome"] == "passed", res["problems"]
    [row] = stage_rows([res])
    assert row["stage"] == "finetune" and row["output_model"] == "finetuned" and row["passed"]
    assert row["input_model"] == "fewshot"  # the stronger of the two baselines is the row's input
    assert row["diff_ci95"][0] > 0
    table, rows = _table_and_rows(gain=0.03)
    [res] = gate_results([check], table, rows)
    assert res["outcome"] == "failed" and "does not lie above" in res["problems"][0]


def test_lower_is_better_ratio_and_interval_bounds():
    rows = {"finetuned": {"heldout.bpb": [[10.0, 10], [12.0, 10]]}, "base": {"heldout.bpb": [[10.0, 10], [11.0, 10]]}}
    table = {"finetuned": {"heldout.bpb": 1.1}, "base": {"heldout.bpb": 1.05}}
    ok = GateCheck(metric="finetuned.heldout.bpb", vs="base.heldout.bpb", max_ratio=1.05)
    assert gate_results([ok], table, rows)[0]["outcome"] == "passed"  # 1.1 / 1.05 = 1.048
    tight = GateCheck(metric="finetuned.heldout.bpb", vs="base.heldout.bpb", max_ratio=1.02)
    assert "> 1.02" in gate_results([tight], table, rows)[0]["problems"][0]
    floor = GateCheck(metric="rm.prefs.acc", min_ci_low=0.6)
    acc = {"rm": {"prefs.acc": [1.0] * 50 + [0.0] * 30}}
    [res] = gate_results([floor], {"rm": {"prefs.acc": 0.625}}, acc)
    assert res["outcome"] == "failed" and res["ci95"][0] < 0.6  # 0.625 point, but its interval reaches 0.52
    [res] = gate_results([floor], {"rm": {"prefs.acc": 0.625}}, {})
    assert "no per-row scores" in res["problems"][0]  # a bound on an interval never passes without rows


def test_the_gate_refuses_alignment_claims_made_through_a_reward_model_at_chance():
    """A profile may switch align's floor off to exercise PPO; its win rate is still no claim."""
    check = GateCheck(stage="align", metric="alignment.win_rate", min=0.5)
    wins = {"alignment": {"win_rate": [1.0] * 40}}
    chance = {"alignment": {"win_rate": 1.0, "reward_model_accuracy": 0.55, "reward_model_accuracy_ci95_low": 0.43}}
    [res] = gate_results([check], chance, wins)
    assert res["outcome"] == "failed" and "reward model at chance" in res["problems"][0]
    sound = {"alignment": {"win_rate": 1.0, "reward_model_accuracy": 0.8, "reward_model_accuracy_ci95_low": 0.7}}
    assert gate_results([check], sound, wins)[0]["outcome"] == "passed"
    judged = {"alignment": {"win_rate": 1.0}}  # DPO judged by vaderSentiment: no reward model involved
    assert gate_results([check], judged, wins)[0]["outcome"] == "passed"
    other = GateCheck(stage="optimize", metric="optimization.size_ratio", max=0.55)
    assert gate_results([other], {**chance, "optimization": {"size_ratio": 0.5}})[0]["outcome"] == "passed"


def test_paired_bounds_need_vs():
    with pytest.raises(ValueError, match="go with vs"):
        GateCheck(metric="finetuned.task.acc", min_diff=0.0)
    with pytest.raises(ValueError, match="go with vs"):
        GateCheck(metric="finetuned.task.acc", vs="base.task.acc", min=0.1)
