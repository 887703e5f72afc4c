"""PPO for language models, ours (TRL 1.x removed its PPOTrainer): the RLHF loop of the seeds.

Each iteration: sample ``batch_size`` prompts; the policy generates completions with the configured
sampling settings; the reward function scores them; every response token is charged
beta * KL(policy || reference) and the score is added on the last token; GAE turns rewards and
value estimates into advantages; then ``ppo.epochs`` passes of minibatch updates with the clipped
policy loss, the clipped value loss and an entropy bonus. An adaptive controller moves beta toward
``ppo.target_kl``. Stops after ``max_steps`` iterations or once the mean reward reaches
``ppo.reward_threshold``; checkpoints every ``ppo.checkpoint_every`` iterations and resumes.

The value head is a linear layer on the policy's last hidden state. With adapters (``align.lora`` or
an unmerged LoRA from finetune) the reference is the same module with adapters disabled.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import nn

from shipyard.schema import MetricsLogger
from shipyard.train.align_config import AlignConfig
from shipyard.train.rl_math import (
    AdaptiveKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_estimate,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from shipyard.train.rl_rewards import RewardFn


class PolicyWithValue(nn.Module):
    """A causal LM and a scalar value head on its last hidden state."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.v_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.v_head.weight, std=1 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids, attention_mask):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids(attention_mask), output_hidden_states=True)
        return out.logits, self.v_head(out.hidden_states[-1].float()).squeeze(-1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generate() uses them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logprobs(logits: torch.Tensor, tokens: torch.Tensor, prompt_len: int, temperature: float):
    """Log-probs of the response tokens and the logits that predicted them."""
    logits = logits[:, prompt_len - 1 : -1] / temperature
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, prompt_len:, None]).squeeze(-1), logits


def sequence_logits(model, input_ids, attention_mask):
    """Logits at every position of ``input_ids`` (a soft prompt's virtual positions dropped)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask)).logits
    return logits[:, -input_ids.shape[1]:]


def response_mask(response: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 on every response token up to and including the first EOS."""
    is_eos = (response == eos_id).long()
    return ((is_eos.cumsum(1) - is_eos) == 0).float()


@torch.no_grad()
def sample_completions(model, tokenizer, prompts: list[str], max_prompt_tokens: int, max_new_tokens: int,
                       temperature: float, top_k: int = 0, top_p: float = 1.0, device: str = "cpu"):
    """Sampled completions of left-padded prompts (long prompts keep their end).

    Returns:
        (tokens [B, P + R], P, response mask [B, R] up to and including EOS, attention mask [B, P + R]).
    """
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False, truncation=True,
                    max_length=max_prompt_tokens).to(device)
    out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=top_k or None, top_p=top_p,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    P = enc["input_ids"].shape[1]
    mask = response_mask(out[:, P:], tokenizer.eos_token_id)
    return out, P, mask, torch.cat([enc["attention_mask"], mask.long()], 1)


class Reference:
    """The frozen reference policy: adapters disabled, or a separate frozen copy."""

    def __init__(self, lm, separate: bool):
        self.lm, self.copy = lm, None  # copy None: the reference is ``lm`` with adapters disabled
        if separate or not hasattr(lm, "disable_adapter"):
            base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
            self.copy = copy.deepcopy(base).eval().requires_grad_(False)

    @torch.no_grad()
    def logits(self, input_ids, attention_mask):
        if self.copy is not None:
            return sequence_logits(self.copy, input_ids, attention_mask)
        with self.lm.disable_adapter():
            return sequence_logits(self.lm, input_ids, attention_mask)


class PPOTrainer:
    """The loop above; ``train()`` runs it and returns the final statistics."""

    def __init__(self, cfg: AlignConfig, model, tokenizer, prompts: list[str], reward: RewardFn,
                 log: MetricsLogger = lambda m, s: None, checkpoint_dir: str | Path | None = None):
        self.cfg, self.p, self.tok, self.prompts, self.reward, self.log = cfg, cfg.ppo, tokenizer, prompts, reward, log
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(cfg.seed)  # the value head's initialization
        self.policy = PolicyWithValue(model).to(self.device).eval()  # eval: no dropout, log-probs match
        self.ref = Reference(model, self.p.separate_reference)
        if self.ref.copy is not None:
            self.ref.copy.to(self.device)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr)
        self.kl_ctl = AdaptiveKLController(self.p.init_kl_coef, self.p.target_kl, self.p.kl_horizon)
        self.checkpoint_dir = checkpoint_dir
        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self.max_prompt_tokens = cfg.max_length - cfg.generation.max_new_tokens

    # ---- one iteration ------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> dict:
        g = self.cfg.generation
        t0 = time.perf_counter()
        out, P, mask, attn = sample_completions(self.policy.lm, self.tok, prompts, self.max_prompt_tokens,
                                                g.max_new_tokens, g.temperature, g.top_k, g.top_p, self.device)
        texts = self.tok.batch_decode(out[:, P:] * mask.long() + self.tok.pad_token_id * (1 - mask.long()),
                                      skip_special_tokens=True)
        t1 = time.perf_counter()
        scores = torch.tensor(self.reward(prompts, texts), dtype=torch.float32, device=self.device)
        if self.p.score_clip:
            scores = scores.clamp(-self.p.score_clip, self.p.score_clip)
        t2 = time.perf_counter()
        logits, values = self.policy(out, attn)
        logp, _ = response_logprobs(logits, out, P, g.temperature)
        ref_logp, _ = response_logprobs(self.ref.logits(out, attn), out, P, g.temperature)
        values = values[:, P - 1 : -1]
        return {"tokens": out, "attn": attn, "mask": mask, "P": P, "scores": scores, "logp": logp,
                "ref_logp": ref_logp, "values": values * mask, "texts": texts,
                "time_generate": t1 - t0, "time_score": t2 - t1, "time_forward": time.perf_counter() - t2}

    def step(self, prompts: list[str]) -> dict[str, float]:
        p, beta = self.p, self.kl_ctl.value
        r = self.rollout(prompts)
        mask = r["mask"]
        kl = kl_estimate(r["logp"], r["ref_logp"], p.kl_estimator) * mask
        rewards = token_rewards(r["scores"], kl, mask, beta)
        adv, returns = gae(rewards, r["values"], mask, p.gamma, p.lam)
        if p.whiten_advantages:
            adv = masked_whiten(adv, mask)
        t0 = time.perf_counter()
        B, stats = len(prompts), []
        for _ in range(p.epochs):
            for idx in torch.randperm(B).split(p.minibatch_size):
                logits, values = self.policy(r["tokens"][idx], r["attn"][idx])
                logp, resp_logits = response_logprobs(logits, r["tokens"][idx], r["P"], self.cfg.generation.temperature)
                m = mask[idx]
                pg, pg_stats = policy_loss(logp, r["logp"][idx], adv[idx], m, p.clip_range)
                vf, vf_clipfrac = value_loss(values[:, r["P"] - 1 : -1], r["values"][idx], returns[idx], m,
                                             p.clip_range_value)
                entropy = masked_mean(entropy_from_logits(resp_logits), m)
                loss = pg + p.vf_coef * vf - p.ent_coef * entropy
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [q for q in self.policy.parameters() if q.requires_grad], p.max_grad_norm)
                self.opt.step()
                stats.append(torch.stack([pg.detach(), vf.detach(), entropy.detach(), pg_stats["clipfrac"],
                                          pg_stats["approx_kl"], vf_clipfrac, grad_norm.detach().float()]))
        s = torch.stack(stats).mean(0).tolist()
        seq_kl = kl.sum(1).mean().item()
        self.kl_ctl.update(seq_kl, B)
        return {"reward_mean": r["scores"].mean().item(), "reward_std": r["scores"].std().item() if B > 1 else 0.0,
                "kl": seq_kl, "kl_coef": beta, "non_score_reward": (-beta * kl).sum(1).mean().item(),
                "entropy": s[2], "policy_loss": s[0], "value_loss": s[1], "clip_fraction": s[3],
                "approx_kl": s[4], "value_clip_fraction": s[5], "grad_norm": s[6],
                "explained_variance": explained_variance(r["values"], returns, mask),
                "response_length": mask.sum(1).mean().item(),
                "time_generate": r["time_generate"], "time_score": r["time_score"],
                "time_update": r["time_forward"] + time.perf_counter() - t0}

    # ---- the loop, with checkpoints ---------------------------------------------------------------

    def _save(self) -> None:
        from shipyard.train.checkpoint import TrainerState, rng_state, save_checkpoint

        state = TrainerState(step=self.iteration, losses=[h["reward_mean"] for h in self.history],
                             extra={"kl_coef": self.kl_ctl.value, "history": self.history})
        save_checkpoint(self.checkpoint_dir, self.policy, self.opt, state, [rng_state(self.device)],
                        self.p.checkpoint_keep)

    def _resume(self) -> bool:
        from shipyard.train.checkpoint import latest, load_checkpoint, set_rng_state

        path = latest(self.checkpoint_dir)
        if path is None:
            return False
        state, rng = load_checkpoint(path, self.policy, self.opt)
        set_rng_state(rng[0], self.device)
        self.iteration, self.kl_ctl.value = state.step, state.extra["kl_coef"]
        self.history = state.extra["history"]
        return True

    def train(self) -> dict[str, float]:
        torch.manual_seed(self.cfg.seed)
        resumed = self.checkpoint_dir is not None and self._resume()
        stop = "max_steps"
        while self.iteration < self.cfg.max_steps:
            pick = torch.randperm(len(self.prompts))[: self.cfg.batch_size].tolist()
            stats = self.step([self.prompts[i] for i in pick])
            self.iteration += 1
            self.history.append(stats)
            self.log(stats, self.iteration)
            if self.checkpoint_dir and self.p.checkpoint_every and self.iteration % self.p.checkpoint_every == 0:
                self._save()
            if self.p.reward_threshold is not None and stats["reward_mean"] >= self.p.reward_threshold:
                stop = "reward_threshold"
                break
        first, last = self.history[0], self.history[-1]
        return {"iterations": self.iteration, "stopped_by_threshold": float(stop == "reward_threshold"),
                "resumed": float(resumed), "reward_first": first["reward_mean"], "reward_last": last["reward_mean"],
                "kl_last": last["kl"], "kl_coef_last": last["kl_coef"], "entropy_last": last["entropy"],
                **{f"mean_{k}": sum(h[k] for h in self.history) / len(self.history)
                   for k in ("time_generate", "time_score", "time_update")}}
