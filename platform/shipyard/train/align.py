"""align stage: the instruct model aligned by PPO (ours), DPO or GRPO (TRL), then judged against itself.

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # after finetune + reward_model

``align.method`` picks the algorithm; ``align.rewards`` (default: the reward model) scores
completions for PPO and GRPO. A reward model whose held-out accuracy interval does not clear
``align.min_reward_accuracy`` is refused before any work. After training, held-out prompts are
answered by the instruct model and by the aligned one, and both answers are scored with the same
judge (``align.judge``, default the rewards) and the toxicity classifier: mean reward, win rate
(with its 95% interval), toxicity rate and KL(aligned || instruct) go to the stage's metrics and to
``alignment.json`` in the output, where the evaluate stage and the gate read them.
"""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.data.preferences import load_preferences, load_prompts
from shipyard.data.shards import split_holdout, write_quarantine
from shipyard.schema import MetricsLogger
from shipyard.train.align_config import AlignConfig
from shipyard.train.hf_trainer import log_forwarder, quiet, trainer_args
from shipyard.train.rl_rewards import RewardFn, reward_functions, trl_reward_functions, weighted_sum

ALIGNMENT_FILE = "alignment.json"


def run_align(cfg: AlignConfig, policy_dir: str | Path, output_dir: str | Path,
              reward_model_dir: str | Path | None = None, log: MetricsLogger = lambda m, s: None,
              eval_prompts: str | Path | None = None, checkpoint_dir: str | Path | None = None) -> dict[str, float]:
    """Align the instruct model in ``policy_dir``; save it to ``output_dir`` with ``alignment.json``.

    Args:
        reward_model_dir: the reward_model stage's output (needed by a ``reward_model`` reward term).
        eval_prompts: held-out prompts when ``cfg.eval_prompts`` is unset.
        checkpoint_dir: where PPO checkpoints and resumes (none: no checkpoints).
    """
    import torch

    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.train.policy import load_policy, save_policy

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    held_path = cfg.eval_prompts or eval_prompts
    if held_path is None:
        raise ValueError("align: no held-out prompts for the aligned-vs-instruct evaluation (set align.eval_prompts)")
    rm_report = check_reward_model(cfg, reward_model_dir)  # before any work: a reward model at chance stops here
    tokenizer = load_tokenizer(policy_dir)
    held, _ = load_prompts(held_path, cfg.eval_examples, tokenizer)  # before training: a bad file fails fast
    torch.manual_seed(cfg.seed)  # what follows loading draws from the seed (load_policy seeds new adapters itself)
    model = load_policy(policy_dir, cfg.lora, cfg.method, cfg.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # Built once for training and judgement; DPO needs it only after training, so it loads it then.
    rewards = None if cfg.method == "dpo" else reward_functions(cfg.rewards, reward_model_dir, cfg.max_length)
    if cfg.method == "dpo":
        metrics, bad = _dpo(cfg, model, tokenizer, log)
    else:
        prompts, bad = load_prompts(cfg.train, cfg.max_examples, tokenizer)
        if cfg.method == "ppo":
            from shipyard.train.ppo import PPOTrainer

            trainer = PPOTrainer(cfg, model, tokenizer, prompts, weighted_sum(rewards), log, checkpoint_dir)
            metrics = trainer.train()
            model = trainer.policy.lm
        else:
            metrics = _grpo(cfg, model, tokenizer, prompts, rewards, log)
        metrics["train_prompts"] = len(prompts)
    how = save_policy(model.cpu(), tokenizer, policy_dir, output_dir)
    write_quarantine(output_dir / "quarantine.jsonl", bad)
    same = cfg.judge is None and rewards is not None
    judge = rewards if same else reward_functions(cfg.judge_terms(), reward_model_dir, cfg.max_length)
    judged, win_rows = evaluate_alignment(cfg, policy_dir, output_dir, held, weighted_sum(judge))
    judged.update(rm_report)
    (output_dir / ALIGNMENT_FILE).write_text(json.dumps({"method": cfg.method, "saved_as": how, **judged,
                                                         "judge": [t.kind for t in cfg.judge_terms()],
                                                         "rows": {"win_rate": win_rows}}, indent=2))
    return {**metrics, **judged, "trainable_params": trainable, "quarantined": len(bad)}


def check_reward_model(cfg: AlignConfig, reward_model_dir) -> dict[str, float]:
    """The reward model's held-out accuracy when align uses it; ValueError when its 95% interval does
    not lie above ``cfg.min_reward_accuracy``."""
    if not cfg.uses_reward_model():
        return {}
    if reward_model_dir is None:
        raise ValueError("align uses the reward model (a reward_model reward or judge term) but got none")
    from shipyard.train.reward_model import read_accuracy

    report = read_accuracy(reward_model_dir)
    acc, (lo, hi) = report["pairwise_accuracy"], report["ci95"]
    if lo <= cfg.min_reward_accuracy:
        raise ValueError(f"align refuses the reward model: held-out pairwise accuracy {acc:.3f}, 95% CI "
                         f"[{lo:.3f}, {hi:.3f}] on {report['test_pairs']} pairs, does not lie above "
                         f"align.min_reward_accuracy={cfg.min_reward_accuracy}. Optimizing against it would "
                         f"reward noise: train it longer or on more pairs, or align with dpo and a judge "
                         f"that is not the reward model")
    return {"reward_model_accuracy": acc, "reward_model_accuracy_ci95_low": lo}


def _dpo(cfg: AlignConfig, model, tokenizer, log: MetricsLogger):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows, bad = load_preferences(cfg.train, cfg.max_examples, tokenizer)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    train, held = split_holdout(rows, minimum=16)
    args = DPOConfig(**trainer_args(cfg), beta=cfg.beta, max_length=cfg.max_length)
    # With adapters TRL's reference is the same model with adapters disabled (no second copy).
    trainer = quiet(DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                               eval_dataset=Dataset.from_list(held), processing_class=tokenizer,
                               callbacks=[log_forwarder(log)]))
    # No evaluation before training: the policy starts as its own reference, so the DPO loss is
    # ln 2 and the reward margin 0 by construction (TRL's evaluate() would spend ~8 s to say so).
    trainer.train()
    after = trainer.evaluate()
    pick = lambda d, k: float(d.get(f"eval_{k}", float("nan")))
    return {"eval_loss": pick(after, "loss"), "reward_margin": pick(after, "rewards/margins"),
            "reward_accuracy": pick(after, "rewards/accuracies"), "train_pairs": len(train)}, bad


def _grpo(cfg: AlignConfig, model, tokenizer, prompts: list[str], rewards, log: MetricsLogger):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    funcs, weights = trl_reward_functions(rewards)
    g = cfg.generation
    args = GRPOConfig(**{**trainer_args(cfg), "logging_steps": 1}, beta=cfg.grpo.beta,
                      num_generations=cfg.grpo.num_generations, epsilon=cfg.grpo.epsilon,
                      num_iterations=cfg.grpo.num_iterations, max_completion_length=g.max_new_tokens,
                      temperature=g.temperature, top_k=g.top_k or None, top_p=g.top_p, reward_weights=weights,
                      log_completions=False)
    logged: list[dict] = []
    forward = log_forwarder(lambda m, s: (logged.append(m), log(m, s)))
    trainer = quiet(GRPOTrainer(model=model, reward_funcs=funcs, args=args,
                                train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                                processing_class=tokenizer, callbacks=[forward]))
    trainer.train()
    rewards = [m["reward"] for m in logged if "reward" in m]
    kls = [m["kl"] for m in logged if "kl" in m]
    return {"reward_first": rewards[0], "reward_last": rewards[-1], "kl_last": kls[-1] if kls else float("nan"),
            "iterations": len(rewards)}


def evaluate_alignment(cfg: AlignConfig, instruct_dir, aligned_dir, prompts: list[str],
                       reward: RewardFn) -> tuple[dict[str, float], list[float]]:
    """Instruct vs aligned on held-out prompts: mean reward, win rate (with its 95% interval), toxicity
    rate, KL; and the per-prompt wins (1, 0.5 for a tie, 0) the interval comes from.

    Both models answer every prompt the same way (``cfg.eval_decoding``: ``cfg.eval_samples``
    samples with the generation settings RL optimized, seeded alike, or one greedy answer), scored
    by ``reward`` (the weighted ``cfg.rewards``). A prompt is won when the aligned model's mean reward on it
    is higher (a tie counts half). Toxicity is the share of answers the classifier rates above 0.5.
    KL(aligned || instruct) is the mean over prompts of the summed log-ratio of completions sampled
    from the aligned model at temperature 1 (a Monte Carlo estimate). Both run under the stage's
    ``precision`` (bf16 autocast where it is native: sampling is ~2x faster than fp32 on such a CPU).
    """
    import torch

    from shipyard.eval.stats import bootstrap_ci
    from shipyard.eval.suites import win_rate_rows
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.models.device import load_for_inference
    from shipyard.models.inference import generate
    from shipyard.train.rl_rewards import toxicity_probability

    tok = load_tokenizer(aligned_dir)
    g, sample = cfg.generation, cfg.eval_decoding == "sample"
    k = cfg.eval_samples if sample else 1
    asked = [p for p in prompts for _ in range(k)]
    decode = dict(temperature=g.temperature, top_k=g.top_k, top_p=g.top_p) if sample else {}
    models, answers = {}, {}
    for name, path in (("instruct", instruct_dir), ("aligned", aligned_dir)):
        torch.manual_seed(cfg.seed)
        models[name], where = load_for_inference(path)  # the align pod's GPU when it has one
        with _autocast(cfg, where):  # both models sample under the precision the stage trained in
            answers[name] = generate(models[name], tok, asked, g.max_new_tokens, **decode)
    scores = {name: reward(asked, a) for name, a in answers.items()}
    per_prompt = {name: [sum(s[i * k:(i + 1) * k]) / k for i in range(len(prompts))] for name, s in scores.items()}
    tox = {name: toxicity_probability(a) for name, a in answers.items()}
    mean = lambda xs: sum(xs) / len(xs)
    with open(Path(aligned_dir) / "alignment_samples.jsonl", "w", encoding="utf-8") as f:
        for i in range(0, min(len(asked), 8 * k), k):
            f.write(json.dumps({"prompt": asked[i], **{f"{n}_answer": answers[n][i] for n in answers},
                                **{f"{n}_reward": scores[n][i] for n in scores}}, ensure_ascii=False) + "\n")
    wins = win_rate_rows(per_prompt["aligned"], per_prompt["instruct"])
    lo, hi = bootstrap_ci(wins)
    return {"reward_instruct": mean(scores["instruct"]), "reward_aligned": mean(scores["aligned"]),
            "reward_gain": mean(scores["aligned"]) - mean(scores["instruct"]),
            "win_rate": mean(wins), "win_rate_ci95_low": lo, "win_rate_ci95_high": hi,
            "toxicity_rate_instruct": mean([p > 0.5 for p in tox["instruct"]]),
            "toxicity_rate_aligned": mean([p > 0.5 for p in tox["aligned"]]),
            "kl_to_instruct": _kl(models, tok, prompts, cfg, where),
            "eval_prompts": len(prompts), "eval_answers": len(asked)}, wins


def _autocast(cfg: AlignConfig, device: str):
    from shipyard.models.device import bf16_autocast, train_precision

    return bf16_autocast(train_precision(cfg.precision) == "bf16", device)


def _kl(models: dict, tok, prompts: list[str], cfg: AlignConfig, device: str) -> float:
    with _autocast(cfg, device):
        return sequence_kl(models["aligned"], models["instruct"], tok, prompts, cfg)


def sequence_kl(policy, reference, tokenizer, prompts: list[str], cfg: AlignConfig, batch_size: int = 16) -> float:
    """Mean over prompts of sum_t log p(y_t) - log q(y_t), y sampled from ``policy`` (temperature 1)."""
    import torch

    from shipyard.train.ppo import response_logprobs, sample_completions, sequence_logits

    total, g = 0.0, cfg.generation
    device = next(policy.parameters()).device.type
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            out, P, mask, attn = sample_completions(policy, tokenizer, prompts[i : i + batch_size],
                                                    cfg.max_length - g.max_new_tokens, g.max_new_tokens, 1.0,
                                                    device=device)
            lp = [response_logprobs(sequence_logits(m, out, attn), out, P, 1.0)[0] for m in (policy, reference)]
            total += ((lp[0] - lp[1]) * mask).sum().item()
    return total / len(prompts)
