"""Each training stage on a tiny model: it must change the weights and improve its own objective."""

import json
import math

import pytest
import torch

from conftest import DEMO, TINY_PRETRAIN
from shipyard.optimize.optimize_config import QuantizeConfig
from shipyard.train.align_config import AlignConfig
from shipyard.train.finetune_config import FinetuneConfig, LoraConfig
from shipyard.train.pretrain_config import PretrainConfig
from shipyard.train.reward_model_config import RewardModelConfig


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _changed(a, b) -> int:
    return sum(not torch.equal(a[k], b[k]) for k in a if k in b)


def test_tokenizer_has_special_tokens_and_chat_template(tiny_tokenizer):
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.templates import format_prompt

    tok = load_tokenizer(tiny_tokenizer)
    assert tok.eos_token == "<|eos|>" and tok.pad_token_id is not None and len(tok) == 600
    text = "def f(x):\n    return x  # über"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: lossless
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == format_prompt("Hi")


def test_pretrain_lowers_validation_loss(tiny_corpus, tiny_tokenizer, tmp_path):
    from shipyard.train.pretrain import run_pretrain

    logged = []
    out = run_pretrain(PretrainConfig(**TINY_PRETRAIN), tiny_corpus, tiny_tokenizer, tmp_path,
                       log=lambda m, s: logged.append((s, m)))
    assert out["val_loss"] < out["val_loss_initial"] - 0.5
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()
    assert any("train_loss" in m for _, m in logged)
    # beside the model's held-out bits per byte: unigram and bigram counted on the training blocks,
    # scored on the same tokens (the per-block rows make the difference a paired one)
    report = json.loads((tmp_path / "pretraining.json").read_text())
    rows = report["rows"]
    assert len(rows["val_bpb"]) == len(rows["unigram_bpb"]) == len(rows["bigram_bpb"]) > 0
    assert report["bigram_bpb"] < report["unigram_bpb"] and out["bigram_bpb"] == report["bigram_bpb"]
    nats_per_token = report["val_bpb"] * sum(n for _, n in rows["val_bpb"]) * math.log(2) / report["val_tokens"]
    assert nats_per_token == pytest.approx(out["val_loss"], abs=0.02)  # the same loss, counted per byte


def test_ngram_baselines_on_known_sequences():
    """A deterministic cycle costs the bigram ~0 bits and the unigram log2(V); iid uniform tokens cost
    both log2(V) per token (the smoothing's excess vanishes with data)."""
    import random

    from shipyard.eval.ngram import fit_ngrams, ngram_bits

    vocab = 16
    cycle = [[i % vocab for i in range(s, s + 257)] for s in range(40)]
    bits = ngram_bits(cycle[:4], fit_ngrams(cycle[4:]), vocab)
    assert sum(bits["bigram"]) / (4 * 256) < 0.05
    assert sum(bits["unigram"]) / (4 * 256) == pytest.approx(math.log2(vocab), abs=0.01)
    rng = random.Random(0)
    iid = [[rng.randrange(vocab) for _ in range(257)] for _ in range(200)]
    bits = ngram_bits(iid[:20], fit_ngrams(iid[20:]), vocab)
    for kind in ("unigram", "bigram"):
        assert sum(bits[kind]) / (20 * 256) == pytest.approx(math.log2(vocab), abs=0.05)


def test_pretrain_rejects_a_corpus_too_small(tiny_tokenizer, tmp_path):
    from shipyard.train.pretrain import run_pretrain

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "corpus.jsonl").write_text(json.dumps({"text": "tiny"}) + "\n")
    with pytest.raises(ValueError, match="corpus too small"):
        run_pretrain(PretrainConfig(**TINY_PRETRAIN), tmp_path / "c", tiny_tokenizer, tmp_path / "m")


def test_lora_finetune_changes_weights_and_lowers_loss(tiny_base, tmp_path):
    from shipyard.train.finetune import run_finetune

    cfg = FinetuneConfig(train=str(DEMO / "instructions/train.jsonl"), max_examples=120, max_steps=15, lr=0.02,
                         max_length=128, lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    out = run_finetune(cfg, tiny_base, tmp_path)
    assert out["eval_loss"] < out["eval_loss_before"]
    assert 0 < out["trainable_params"] < 5_000
    assert _changed(_weights(tiny_base), _weights(tmp_path)) > 0
    assert (tmp_path / "adapters" / "default" / "adapter_model.safetensors").exists()


def test_reward_model_trains_a_scalar_head(tiny_base, tmp_path):
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.train.reward_model import load_reward_model, score_texts

    cfg = RewardModelConfig(train=str(DEMO / "preferences/train.jsonl"), test=str(DEMO / "preferences/test.jsonl"),
                            max_steps=10, max_examples=80, max_length=110, lr=0.005)
    from shipyard.train.reward_model import run_reward_model

    out = run_reward_model(cfg, tiny_base, tmp_path)
    assert out["train_loss"] > 0 and 0.0 <= out["pairwise_accuracy"] <= 1.0
    # pairs over max_length are quarantined with a reason, never silently dropped
    assert out["train_pairs"] + out["quarantined"] == 80 and out["quarantined"] > 0
    assert "> max_length 110" in (tmp_path / "quarantine.jsonl").read_text()
    rm = load_reward_model(tmp_path)
    scores = score_texts(rm, load_tokenizer(tmp_path), ["great film", "awful film"], 110)
    assert len(scores) == 2 and scores[0] != scores[1]
    # the same seed gives the same reward model (its new score head included): runs are reproducible
    again = run_reward_model(cfg, tiny_base, tmp_path / "again")
    assert again["train_loss"] == out["train_loss"] and again["pairwise_accuracy"] == out["pairwise_accuracy"]
    assert torch.equal(load_reward_model(tmp_path / "again").score.weight, rm.score.weight)


def test_dpo_moves_the_policy_toward_chosen(tiny_base, tmp_path):
    from shipyard.train.align import run_align

    cfg = AlignConfig(train=str(DEMO / "preferences/train.jsonl"), max_examples=80, max_steps=20, lr=0.005,
                      max_length=128, batch_size=8, eval_prompts=str(DEMO / "preferences/test.jsonl"),
                      eval_examples=8, rewards=[{"kind": "non_toxic"}])
    logged = []
    out = run_align(cfg, tiny_base, tmp_path, log=lambda m, s: logged.append(m))
    margins = [m["rewards/margins"] for m in logged if "rewards/margins" in m and "eval_loss" not in m]
    # the policy's log-ratio of chosen over rejected grows on the pairs it trains on
    assert len(margins) >= 2 and margins[-1] > margins[0] and margins[-1] > 0
    assert out["train_pairs"] == 80 - 16
    assert out["eval_prompts"] == 8 and 0 <= out["toxicity_rate_aligned"] <= 1
    assert _changed(_weights(tiny_base), _weights(tmp_path)) > 0


def test_quantize_is_smaller_and_reloads_exactly(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM

    from shipyard.models.causal_lm import load_causal_lm
    from shipyard.optimize.quantize import _quantize_modules, linear_names, run_quantize

    out = run_quantize(QuantizeConfig(method="dynamic_int8"), tiny_base, tmp_path)
    assert out["size_bytes_after"] < out["size_bytes_before"] and out["quantized_layers"] == 7
    q = load_causal_lm(tmp_path)
    ref = AutoModelForCausalLM.from_pretrained(str(tiny_base)).eval()
    ref = _quantize_modules(ref, linear_names(ref, ["lm_head"]))
    name = "model.layers.0.mlp.down_proj"
    assert torch.equal(q.get_submodule(name).weight().int_repr(), ref.get_submodule(name).weight().int_repr())
    ids = torch.randint(0, 600, (1, 16))
    assert torch.allclose(q(ids).logits, ref(ids).logits)


def test_bf16_is_the_default_half_the_size_and_serves_in_bf16(tiny_base, tmp_path):
    from shipyard.models.causal_lm import load_causal_lm
    from shipyard.models.device import inference_device
    from shipyard.models.inference import perplexity
    from shipyard.optimize.quantize import run_quantize

    assert QuantizeConfig().method == "bf16"
    out = run_quantize(QuantizeConfig(), tiny_base, tmp_path / "q")
    assert 0.45 < out["size_ratio"] < 0.55
    q, ref = load_causal_lm(tmp_path / "q"), load_causal_lm(tiny_base)
    assert {p.dtype for p in q.parameters()} == {torch.bfloat16}
    assert inference_device("auto", tmp_path / "q") in ("cpu", "cuda")  # bf16 runs wherever the model goes
    from shipyard.models.causal_lm import load_tokenizer

    tok, texts = load_tokenizer(tiny_base), ["def f(x):\n    return x + 1", "The list is a sequence type."]
    assert perplexity(q, tok, texts, 64) == pytest.approx(perplexity(ref, tok, texts, 64), rel=0.02)


def test_align_refuses_a_reward_model_at_chance_before_any_work(tmp_path):
    from shipyard.eval.stats import bootstrap_ci
    from shipyard.train.align import check_reward_model, run_align
    from shipyard.train.reward_model import REPORT_FILE

    def rm_with(hits):
        d = tmp_path / f"rm{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / REPORT_FILE).write_text(json.dumps({"pairwise_accuracy": sum(hits) / len(hits), "ci95": bootstrap_ci(hits),
                                                 "test_pairs": len(hits), "rows": {"pairwise_accuracy": hits}}))
        return d

    chance = rm_with([1.0, 0.0] * 30)  # 0.5 on 60 pairs: the tiny profile's reward model
    ppo = AlignConfig(method="ppo", train=str(DEMO / "preferences/train.jsonl"),
                      eval_prompts=str(DEMO / "preferences/test.jsonl"))
    # refused before the policy is even read: the policy path does not exist
    with pytest.raises(ValueError, match=r"refuses the reward model: held-out pairwise accuracy 0.500, 95% CI"):
        run_align(ppo, tmp_path / "no-policy", tmp_path / "out", reward_model_dir=chance)
    close = rm_with([1.0] * 40 + [0.0] * 20)  # 0.667, but its interval reaches below 0.6
    with pytest.raises(ValueError, match="does not lie above align.min_reward_accuracy=0.6"):
        check_reward_model(ppo, close)
    good = rm_with([1.0] * 100 + [0.0] * 20)  # 0.83 on 120 pairs
    assert check_reward_model(ppo, good)["reward_model_accuracy_ci95_low"] > 0.75
    with pytest.raises(ValueError, match="no reward_model.json"):
        check_reward_model(ppo, tmp_path)
    # DPO judged by vaderSentiment does not use the reward model: nothing to refuse
    dpo = ppo.model_copy(update={"method": "dpo", "judge": [{"kind": "sentiment"}]})
    dpo = AlignConfig.model_validate(dpo.model_dump())
    assert not dpo.uses_reward_model() and check_reward_model(dpo, chance) == {}


def test_sentiment_judge_is_vader():
    from shipyard.train.rl_rewards import RewardTerm, build_reward

    judge = build_reward([RewardTerm(kind="sentiment")], None, 64)
    good, bad, flat = judge(["", "", ""], ["A wonderful, moving film.", "A dull, awful mess.", "It is a film."])
    assert good > 0.5 and bad < -0.5 and flat == 0.0
