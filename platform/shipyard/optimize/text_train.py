"""A short causal-LM training loop on packed corpus text, shared by pruning recovery and distillation.

    loss = loss_fn(model, input_ids)   # called on [batch, seq_len] windows drawn with a fixed seed

It is deliberately small: AdamW with linear warmup, grad clipping, fp32 on CPU. The pretrain
stage's loop (checkpoints, DDP) is for runs of hours; these are minutes on top of a trained model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def corpus_blocks(corpus_dir: str | Path, tokenizer, seq_len: int):
    """(train blocks, held-out blocks): the corpus packed into ``seq_len`` windows, the last few held out."""
    from shipyard.train.objectives import pack_corpus

    blocks = pack_corpus(corpus_dir, tokenizer, seq_len)
    n_eval = max(1, min(16, blocks.shape[0] // 10))
    return blocks[:-n_eval], blocks[-n_eval:]


def eval_loss(model, blocks, loss_fn: Callable, batch_size: int = 8) -> float:
    """Mean ``loss_fn`` over fixed held-out blocks (no grad)."""
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, blocks.shape[0], batch_size):
            chunk = blocks[i : i + batch_size]
            total += loss_fn(model, chunk).item() * chunk.shape[0]
    return total / blocks.shape[0]


def train_steps(model, params, blocks, loss_fn: Callable, steps: int, lr: float, batch_size: int,
                seed: int = 0, log: Callable[[dict, int], None] | None = None,
                after_step: Callable[[], None] | None = None) -> list[float]:
    """``steps`` AdamW steps on random windows of ``blocks``; returns the loss per step.

    ``after_step`` runs after each optimizer step (pruning re-applies its masks there).
    """
    import math

    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    losses = []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        idx = torch.randint(0, blocks.shape[0], (batch_size,), generator=gen)
        loss = loss_fn(model, blocks[idx])
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"non-finite loss at step {step}: {loss.item()}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if after_step is not None:
            after_step()
        losses.append(loss.item())
        if log is not None:
            log({"loss": loss.item()}, step)
    model.eval()
    return losses


def lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss
