"""pretrain stage: a causal LM trained from scratch on the clean corpus (nanoGPT-style loop).

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # third step

Documents are tokenized, joined with EOS and packed into fixed blocks (no padding wasted); a small
share of blocks is held out for validation loss. AdamW, linear warmup then cosine decay, gradient
clipping. fp32 on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from shipyard.config import PretrainConfig
from shipyard.data.tokenizer import iter_corpus

MetricsLogger = Callable[[dict[str, float], int], None]


def _noop(metrics: dict[str, float], step: int) -> None:
    return None


def pack_corpus(corpus_dir: str | Path, tokenizer, block: int):
    """Tokenize every document, join with EOS, cut into ``block``-token rows (LongTensor [n, block])."""
    import torch

    ids: list[int] = []
    for text in iter_corpus(corpus_dir):
        ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // block
    if n < 2:
        raise ValueError(f"corpus too small: {len(ids)} tokens make fewer than 2 blocks of {block}")
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to 10% of it at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate_loss(model, blocks, batch_size: int) -> float:
    import torch

    model.eval()
    losses = []
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            batch = blocks[i : i + batch_size]
            losses.append(model(input_ids=batch, labels=batch).loss.item() * len(batch))
    model.train()
    return sum(losses) / len(blocks)


def run_pretrain(
    cfg: PretrainConfig,
    corpus_dir: str | Path,
    tokenizer_dir: str | Path,
    output_dir: str | Path,
    log: MetricsLogger = _noop,
) -> dict[str, float]:
    """Train a causal LM on ``corpus_dir`` with the tokenizer in ``tokenizer_dir``; save to ``output_dir``.

    Returns:
        Metrics: initial and final validation loss, tokens seen, tokens/s, parameter count.
    """
    import torch

    from shipyard.models.causal_lm import build_llama, load_tokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(tokenizer_dir)
    blocks = pack_corpus(corpus_dir, tokenizer, cfg.context_length)
    perm = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(cfg.seed))
    n_val = max(1, int(len(blocks) * cfg.eval_fraction))
    val, train = blocks[perm[:n_val]], blocks[perm[n_val:]]

    model = build_llama(cfg, len(tokenizer), tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    # Weight decay on matrices only; norms and biases are left alone (as in nanoGPT).
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    val_loss_init = evaluate_loss(model, val, cfg.batch_size)
    log({"val_loss": val_loss_init}, 0)
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    t0, tokens, loss_ema = time.perf_counter(), 0, None
    for step in range(cfg.max_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = torch.randint(len(train), (cfg.batch_size,), generator=gen)
        batch = train[idx]
        loss = model(input_ids=batch, labels=batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}: lower lr ({cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        tokens += batch.numel()
        loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        if (step + 1) % max(cfg.max_steps // 10, 1) == 0:
            log({"train_loss": loss_ema, "lr": lr_at(step, cfg),
                 "tokens_per_s": tokens / (time.perf_counter() - t0)}, step + 1)
    elapsed = time.perf_counter() - t0
    val_loss = evaluate_loss(model, val, cfg.batch_size)
    log({"val_loss": val_loss}, cfg.max_steps)

    output_dir = Path(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return {
        "val_loss_initial": val_loss_init,
        "val_loss": val_loss,
        "val_perplexity": math.exp(val_loss),
        "train_loss": loss_ema,
        "train_tokens": tokens,
        "corpus_tokens": blocks.numel(),
        "tokens_per_s": tokens / elapsed,
        "n_params": n_params,
    }
