"""Our PPO on a tiny model with a simple known reward: the reward rises and the KL stays bounded."""

import json
from functools import partial

import pytest
import torch

from conftest import DEMO
from shipyard.train.align_config import AlignConfig
from shipyard.train.finetune_config import LoraConfig
from shipyard.train.rl_rewards import RewardTerm

# A simple known reward: the share of generated words that are common function words.
KNOWN = [RewardTerm(kind="keywords", keywords=["the", "a", "of", "and", "to", "is", "in", "it"])]


def _cfg(**kw):
    base = dict(method="ppo", train=str(DEMO / "preferences/train.jsonl"), rewards=KNOWN, max_length=64,
                batch_size=16, max_steps=20, lr=0.01, generation={"max_new_tokens": 12},
                ppo={"minibatch_size": 8, "epochs": 2, "init_kl_coef": 0.05, "target_kl": 2.0, "kl_horizon": 200,
                     "checkpoint_every": 4})
    for k, v in kw.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    return AlignConfig(**base)


def _trainer(cfg, base, **kw):
    from shipyard.data.preferences import load_prompts
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.train.policy import load_policy
    from shipyard.train.ppo import PPOTrainer
    from shipyard.train.rl_rewards import build_reward

    tok = load_tokenizer(base)
    prompts, _ = load_prompts(cfg.train, 200, tok)
    return PPOTrainer(cfg, load_policy(base, cfg.lora, "ppo", cfg.seed), tok, prompts,
                      build_reward(cfg.rewards, None, 64), **kw)


def _mean_reward(trainer, n_batches=6):
    """The policy's mean reward over a fixed set of 96 sampled completions (fixed seed)."""
    torch.manual_seed(123)
    return sum(trainer.rollout(trainer.prompts[i * 16:(i + 1) * 16])["scores"].mean().item()
               for i in range(n_batches)) / n_batches


def test_ppo_raises_a_known_reward_while_kl_stays_bounded(tiny_base, tmp_path):
    logged = []
    trainer = _trainer(_cfg(seed=1), tiny_base, log=lambda m, s: logged.append(m))
    before = _mean_reward(trainer)
    out = trainer.train()
    after = _mean_reward(trainer)
    assert out["iterations"] == 20 and len(logged) == 20
    assert after > before + 0.05 and after > 1.5 * before, (before, after, [m["reward_mean"] for m in logged])
    kls = [m["kl"] for m in logged]
    assert max(kls) < 20 and sum(kls[10:]) / 10 < 8, kls
    for key in ("entropy", "clip_fraction", "value_loss", "explained_variance", "kl_coef", "time_generate"):
        assert key in logged[-1]
    # the adaptive controller raised beta while KL stayed above the target of 2
    assert logged[-1]["kl_coef"] > logged[0]["kl_coef"]


def test_ppo_with_lora_uses_the_disabled_adapter_as_reference(tiny_base):
    cfg = _cfg(lora=LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]), max_steps=1)
    trainer = _trainer(cfg, tiny_base)
    assert trainer.ref.copy is None  # no second model in memory
    stats = trainer.step(trainer.prompts[:16])
    assert stats["kl"] == 0.0  # LoRA starts as the identity: policy == reference on the first rollout
    second = trainer.step(trainer.prompts[:16])
    assert second["kl"] != 0.0


def test_ppo_stops_at_the_reward_threshold(tiny_base):
    out = _trainer(_cfg(ppo={"reward_threshold": -1.0}), tiny_base).train()
    assert out["iterations"] == 1 and out["stopped_by_threshold"] == 1.0


def test_ppo_resumes_from_its_checkpoint(tiny_base, tmp_path):
    straight = _trainer(_cfg(max_steps=8), tiny_base, checkpoint_dir=tmp_path / "a").train()
    _trainer(_cfg(max_steps=4), tiny_base, checkpoint_dir=tmp_path / "b").train()  # "killed" after 4
    resumed = _trainer(_cfg(max_steps=8), tiny_base, checkpoint_dir=tmp_path / "b").train()
    assert resumed["resumed"] == 1.0 and resumed["iterations"] == 8
    assert resumed["reward_last"] == pytest.approx(straight["reward_last"], abs=1e-6)
    assert resumed["kl_coef_last"] == pytest.approx(straight["kl_coef_last"])


def test_ppo_with_lora_resumes_exactly_whatever_the_rng_did_before(tiny_base, tmp_path):
    """New adapters are initialized from the config's seed, so a resumed run continues the straight one."""
    cfg = partial(_cfg, lora=LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
                  ppo={"checkpoint_every": 2})
    torch.rand(1000)  # the global RNG is somewhere else when each trainer is built
    straight = _trainer(cfg(max_steps=6), tiny_base, checkpoint_dir=tmp_path / "a").train()
    _trainer(cfg(max_steps=4), tiny_base, checkpoint_dir=tmp_path / "b").train()
    resumed = _trainer(cfg(max_steps=6), tiny_base, checkpoint_dir=tmp_path / "b").train()
    assert resumed["resumed"] == 1.0
    assert resumed["reward_last"] == pytest.approx(straight["reward_last"], abs=1e-6)


def test_align_stage_runs_ppo_and_judges_aligned_against_instruct(tiny_base, tmp_path):
    from shipyard.train.align import run_align

    cfg = _cfg(max_steps=6, eval_examples=12, eval_prompts=str(DEMO / "preferences/test.jsonl"))
    out = run_align(cfg, tiny_base, tmp_path / "aligned")
    report = json.loads((tmp_path / "aligned" / "alignment.json").read_text())
    assert report["method"] == "ppo" and report["saved_as"] == "full" and report["eval_prompts"] == 12
    for key in ("reward_instruct", "reward_aligned", "win_rate", "toxicity_rate_aligned", "kl_to_instruct"):
        assert key in out and key in report
    assert 0 <= out["win_rate"] <= 1 and out["kl_to_instruct"] > 0
    from safetensors.torch import load_file

    before = load_file(str(tiny_base / "model.safetensors"))
    after = load_file(str(tmp_path / "aligned/model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_grpo_trains_through_trl_with_reward_functions(tiny_base, tmp_path):
    from shipyard.train.align import run_align

    cfg = AlignConfig(method="grpo", train=str(DEMO / "preferences/train.jsonl"), rewards=KNOWN, max_length=64,
                      batch_size=8, max_steps=3, lr=0.01, max_examples=40, eval_examples=8,
                      eval_prompts=str(DEMO / "preferences/test.jsonl"), generation={"max_new_tokens": 8},
                      grpo={"num_generations": 4, "beta": 0.04},
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    logged = []
    out = run_align(cfg, tiny_base, tmp_path / "aligned", log=lambda m, s: logged.append(m))
    assert out["iterations"] == 3 and out["train_prompts"] == 40
    assert any("kl" in m for m in logged) and any("reward" in m for m in logged)
    report = json.loads((tmp_path / "aligned" / "alignment.json").read_text())
    assert report["method"] == "grpo" and report["saved_as"] == "merged_lora"


def test_grpo_batch_must_hold_whole_groups():
    with pytest.raises(ValueError, match="multiple of grpo.num_generations"):
        AlignConfig(method="grpo", train="x.jsonl", batch_size=6, grpo={"num_generations": 4})
