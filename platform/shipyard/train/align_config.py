"""AlignConfig: the ``align:`` section — PPO (ours), DPO or GRPO (TRL) on the instruct model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shipyard.schema import StrictModel, TrainPrecision
from shipyard.train.finetune_config import LoraConfig
from shipyard.train.rl_rewards import RewardTerm

# What the align stage's judgement (alignment.json) reports; a gate may name any as alignment.<key>.
ALIGNMENT_KEYS = ("reward_instruct", "reward_aligned", "reward_gain", "win_rate", "toxicity_rate_instruct",
                  "toxicity_rate_aligned", "kl_to_instruct", "eval_prompts", "eval_answers", "reward_model_accuracy",
                  "reward_model_accuracy_ci95_low", "win_rate_ci95_low", "win_rate_ci95_high")


# The reward model's held-out accuracy interval must clear this before align uses it (and before the
# register gate accepts an alignment claim measured through it).
REWARD_MODEL_FLOOR = 0.6

class GenerationSettings(StrictModel):
    """How the policy samples completions during RL (and the aligned-vs-instruct KL estimate)."""

    max_new_tokens: int = Field(24, gt=0, le=4096)
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature; log-probs use it too.")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens (0: off).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (1: off).")


class PPOSettings(StrictModel):
    """PPO with a value head, per-token KL penalty to the frozen reference, GAE and an entropy bonus."""

    epochs: int = Field(4, gt=0, description="Optimization passes over each rollout batch.")
    minibatch_size: int = Field(8, gt=0)
    clip_range: float = Field(0.2, gt=0, lt=1, description="epsilon of the clipped policy ratio.")
    clip_range_value: float = Field(0.2, gt=0, description="How far a value may move from the rollout's.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ent_coef: float = Field(0.01, ge=0, description="Weight of the entropy bonus (keeps generations varied).")
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    init_kl_coef: float = Field(0.05, ge=0, description="Initial beta of the per-token KL penalty.")
    target_kl: float | None = Field(6.0, gt=0, description="Per-sequence KL the adaptive controller steers "
                                    "beta toward (null: beta stays fixed).")
    kl_horizon: int = Field(10_000, gt=0, description="Adaptive KL horizon (sequences).")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator in the penalty.")
    whiten_advantages: bool = True
    score_clip: float | None = Field(None, gt=0, description="Clip sequence scores to +-this.")
    max_grad_norm: float = Field(1.0, gt=0)
    reward_threshold: float | None = Field(None, description="Stop once an iteration's mean reward reaches it.")
    checkpoint_every: int = Field(10, ge=0, description="Iterations between checkpoints (0: none).")
    checkpoint_keep: int = Field(2, gt=0)
    separate_reference: bool = Field(False, description="With LoRA, still keep a separate frozen reference "
                                     "copy (for the memory benchmark; the default disables the adapters).")


class GRPOSettings(StrictModel):
    """TRL's GRPOTrainer: advantages are rewards normalized within a group of completions per prompt."""

    num_generations: int = Field(4, ge=2, description="Completions per prompt (the group).")
    beta: float = Field(0.04, ge=0, description="KL coefficient to the reference (0: no reference model).")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clip range of the policy ratio.")
    num_iterations: int = Field(1, gt=0, description="Optimization passes per generation batch.")


class AlignConfig(StrictModel):
    """Preference alignment of the fine-tuned (instruct) model: ``method`` picks the algorithm."""

    method: Literal["ppo", "dpo", "grpo"] = Field("dpo", description="ppo: ours (value head, KL-shift penalty, "
                                                   "GAE); dpo and grpo: TRL.")
    train: str = Field(description="JSONL: preference rows (dpo; any format of shipyard.data.preferences) "
                       "or prompt/preference rows whose prompts the policy completes (ppo, grpo).")
    eval_prompts: str | None = Field(None, description="Held-out prompts for aligned-vs-instruct (any prompt "
                                     "or preference rows); null: the prompts of the first reward suite of evaluate.")
    eval_examples: int = Field(32, gt=0, description="Held-out prompts scored aligned vs instruct.")
    eval_decoding: Literal["sample", "greedy"] = Field("sample", description="How both models answer the "
                                                       "held-out prompts: sample (the generation settings RL "
                                                       "optimized, fixed seed) or greedy.")
    eval_samples: int = Field(4, gt=0, le=64, description="Answers per held-out prompt and model (sample).")
    rewards: list[RewardTerm] = Field(default_factory=lambda: [RewardTerm()], min_length=1,
                                      description="Reward terms (ppo, grpo; and the alignment evaluation "
                                                  "unless judge is set).")
    judge: list[RewardTerm] | None = Field(None, min_length=1, description="What scores aligned vs instruct on "
                                           "the held-out prompts (default: rewards). A judge the policy did not "
                                           "optimize against (sentiment: vaderSentiment) makes the win rate "
                                           "evidence rather than a measure of reward hacking.")
    min_reward_accuracy: float = Field(REWARD_MODEL_FLOOR, ge=0, lt=1, description="Floor on the reward "
                                       "model's held-out pairwise accuracy: when align uses the reward model "
                                       "(a reward or judge term) and the accuracy's 95% interval does not lie "
                                       "above it, align refuses to start (a reward model at chance rewards noise).")
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters on the policy (the reference is "
                                    "the same weights with adapters disabled); merged into the output.")
    generation: GenerationSettings = GenerationSettings()
    ppo: PPOSettings = PPOSettings()
    grpo: GRPOSettings = GRPOSettings()
    beta: float = Field(0.1, gt=0, description="DPO temperature: strength of the pull to the reference.")
    max_length: int = Field(128, gt=8, description="Longest prompt + completion, in tokens.")
    batch_size: int = Field(8, gt=0, description="Pairs per step (dpo); prompts per rollout (ppo); "
                            "completions per step (grpo).")
    max_steps: int = Field(40, gt=0, description="Optimizer steps (dpo, grpo) or PPO iterations.")
    lr: float = Field(5e-4, gt=0, le=1)
    max_examples: int | None = Field(None, gt=0)
    seed: int = 0
    precision: TrainPrecision = "auto"

    def judge_terms(self) -> list[RewardTerm]:
        return self.judge or self.rewards

    def uses_reward_model(self) -> bool:
        terms = (self.rewards if self.method != "dpo" else []) + self.judge_terms()
        return any(t.kind == "reward_model" for t in terms)

    @model_validator(mode="after")
    def _shapes(self) -> AlignConfig:
        if self.method == "grpo" and self.batch_size % self.grpo.num_generations:
            raise ValueError(f"grpo: batch_size ({self.batch_size}) must be a multiple of "
                             f"grpo.num_generations ({self.grpo.num_generations})")
        if self.method == "ppo" and self.ppo.minibatch_size > self.batch_size:
            raise ValueError(f"ppo.minibatch_size ({self.ppo.minibatch_size}) exceeds batch_size ({self.batch_size})")
        if self.generation.max_new_tokens >= self.max_length:
            raise ValueError(f"generation.max_new_tokens ({self.generation.max_new_tokens}) leaves no room for "
                             f"the prompt in max_length ({self.max_length})")
        return self
