"""PPO's math against hand-computed cases (shipyard.train.rl_math)."""

import math

import pytest
import torch

from shipyard.train.rl_math import (
    AdaptiveKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_estimate,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)


def test_gae_matches_a_hand_computed_case_with_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [1.0, 1.0, 5.0]])  # 5.0 sits on padding: must not leak in
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: A2 = 1 - .3 = .7; A1 = (.9*.3 - .4) + .72*.7 = .374; A0 = (.9*.4 - .5) + .72*.374 = .12928
    # row 1 ends at t=1: A1 = 2 - 1 = 1; A0 = (.9*1 - 1) + .72*1 = .62; A2 masked to 0
    torch.testing.assert_close(adv, torch.tensor([[0.12928, 0.374, 0.7], [0.62, 1.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.62928, 0.774, 1.0], [1.62, 2.0, 0.0]]))


def test_gae_with_lambda_one_and_gamma_one_is_reward_to_go_minus_value():
    rewards, values = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.5, 0.25, 0.0]])
    adv, _ = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[6 - 0.5, 5 - 0.25, 3.0]]))


def test_token_rewards_put_the_score_on_the_last_real_token_and_charge_kl_everywhere():
    kl = torch.tensor([[0.1, 0.2, 9.0]])
    r = token_rewards(torch.tensor([2.0]), kl, torch.tensor([[1.0, 1.0, 0.0]]), beta=0.5)
    torch.testing.assert_close(r, torch.tensor([[-0.05, 1.9, 0.0]]))


def test_clipped_policy_loss_is_pessimistic():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, stats = policy_loss(logp, old, adv, torch.ones(1, 3), clip=0.2)
    # ratio 1.5, A>0: clipped at 1.2; ratio .5, A>0: unclipped .5 (worse); ratio .5, A<0: clipped at .8
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8) / 3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)


def test_clipped_value_loss_takes_the_larger_error():
    loss, frac = value_loss(values=torch.tensor([[2.0]]), old_values=torch.tensor([[0.0]]),
                            returns=torch.tensor([[1.0]]), mask=torch.ones(1, 1), clip=0.5)
    # unclipped error (2-1)^2 = 1; clipped value 0.5, error .25; max = 1
    assert loss.item() == pytest.approx(0.5) and frac.item() == 0.0


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_kl_estimators_are_unbiased_and_k3_is_never_negative(kind):
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    true_kl = (p * (p / q).log()).sum()
    per_token = kl_estimate(p.log(), q.log(), kind)
    torch.testing.assert_close((p * per_token).sum(), true_kl)  # expectation under the policy
    if kind == "k3":
        assert (per_token >= 0).all()
    assert kl_estimate(p.log(), p.log(), kind).abs().max() == 0


def test_adaptive_kl_controller_moves_beta_toward_the_target():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    assert ctl.update(12.0, 256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))  # error clipped to +0.2
    before = ctl.value
    assert ctl.update(3.0, 256) == pytest.approx(before * (1 - 0.2 * 256 / 10_000))  # clipped to -0.2
    fixed = AdaptiveKLController(0.1, target=None, horizon=10_000)
    assert fixed.update(100.0, 256) == 0.1


def test_whiten_entropy_and_explained_variance():
    x, mask = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    assert w[0, :3].mean().item() == pytest.approx(0, abs=1e-6) and w[0, 3] == 0
    assert entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    r = torch.tensor([[1.0, 2.0, 3.0]])
    assert explained_variance(r, r, torch.ones(1, 3)) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(r, 2.0), r, torch.ones(1, 3)) == pytest.approx(0.0)
