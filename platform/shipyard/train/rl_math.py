"""The math of PPO for language models, as small pure-torch functions (unit-tested one by one).

Shapes: ``[batch, T]`` over response tokens, with ``mask`` 1 on real tokens (up to and including
EOS) and 0 on padding. Follows Ziegler et al. 2019 / Ouyang et al. 2022 (per-token KL penalty,
reward on the last token, GAE, clipped surrogate and value losses, adaptive KL coefficient).
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalize to unit variance (and zero mean) over the masked entries."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled from the policy.

    k1 = log p - log q (unbiased, can be negative per token); k2 = (log p - log q)^2 / 2;
    k3 = (q/p - 1) - log(q/p) (unbiased and never negative; Schulman 2020).
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r} (k1, k2, k3)")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """-beta * KL on every response token, plus the sequence score on its last real token."""
    rewards = -beta * kl * mask
    last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & mask.bool()
    return rewards + last * scores[:, None]


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over right-padded responses.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last real token is 0);
    A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages, returns = advantages + values).
    """
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        next_value = values[:, t + 1] * next_mask if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * next_mask * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1-eps, 1+eps)), r = pi/pi_old."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
             "approx_kl": masked_mean(0.5 * (logp - old_logp) ** 2, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped within ``clip`` of the rollout's value."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss1, loss2 = (values - returns) ** 2, (clipped - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(loss1, loss2), mask), masked_mean((loss2 > loss1).float(), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R): 1 is a perfect value function, 0 no better than the mean."""
    var_r = masked_var(returns, mask)
    if var_r.item() == 0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / var_r)


class AdaptiveKLController:
    """beta follows the KL toward ``target`` (Ziegler et al. 2019):

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).
    With ``target`` None, beta stays fixed.
    """

    def __init__(self, init_beta: float, target: float | None, horizon: int):
        self.value, self.target, self.horizon = init_beta, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = min(max(current_kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + error * n_steps / self.horizon
        return self.value
