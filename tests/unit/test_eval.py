import pytest

from shipyard.config import GateCheck
from shipyard.eval.metrics import bleu, rouge
from shipyard.tracking.registry import check_gate


def test_rouge_and_bleu_known_values():
    assert rouge(["the cat sat"], ["the cat sat"]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge(["dog"], ["the cat sat"])["rouge1"] == 0.0
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)


def test_gate_checks():
    table = {"quantized": {"perplexity": 100.0, "perplexity_ratio": 1.01, "rougeL": 0.2}}
    assert check_gate([GateCheck(metric="quantized.perplexity_ratio", max=1.05)], table) == []
    failures = check_gate([GateCheck(metric="quantized.rougeL", min=0.3),
                           GateCheck(metric="aligned.reward", min=0.0)], table)
    assert failures == ["quantized.rougeL=0.2 < min 0.3", "aligned.reward: not measured"]
    with pytest.raises(ValueError, match="needs min or max"):
        GateCheck(metric="quantized.rougeL")


def test_evaluate_stage_writes_a_table(tiny_base, tmp_path):
    from conftest import DEMO

    from shipyard.config import EvaluateConfig
    from shipyard.eval.evaluate import run_evaluate

    cfg = EvaluateConfig(heldout_text=str(DEMO / "heldout/python-docs.jsonl"),
                         instructions_test=str(DEMO / "instructions/test.jsonl"),
                         preferences_test=str(DEMO / "preferences/test.jsonl"), max_examples=3,
                         max_new_tokens=4, context_length=128)
    table = run_evaluate(cfg, {"base": tiny_base}, tiny_base, tmp_path)
    assert set(table["base"]) == {"perplexity", "rouge1", "rouge2", "rougeL", "bleu", "reward"}
    assert 1 < table["base"]["perplexity"] < 600 * 2
    assert (tmp_path / "eval.md").read_text().startswith("| model | perplexity")
