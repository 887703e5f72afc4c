"""Magnitude pruning: unstructured (zero the smallest weights) or structured (drop MLP channels).

- unstructured: in every Linear layer but the skipped ones, the ``sparsity`` share of weights with
  the smallest |w| is set to zero (per layer, so no layer is emptied). The file stays dense: the
  zeros pay off with sparse kernels or compression, not on disk; the report says so.
- structured: in every transformer block's MLP (Llama-style ``gate_proj``/``up_proj``/``down_proj``)
  the ``sparsity`` share of intermediate channels with the smallest L2 norm (gate row + up row +
  down column) is removed, the same count in each block, and ``intermediate_size`` shrinks: a
  genuinely smaller and faster model.

An optional recovery fine-tune (``recover_steps`` of causal-LM loss on the corpus) follows; in
unstructured mode the masks are re-applied after every step, so pruned weights stay zero.
"""

from __future__ import annotations

from pathlib import Path

from shipyard.optimize.quantize import linear_names


def unstructured_masks(model, sparsity: float, skip: list[str]) -> dict[str, object]:
    """Zero the smallest-|w| share of each Linear's weights; returns the keep-masks by layer name."""
    import torch

    masks = {}
    with torch.no_grad():
        for name in linear_names(model, skip):
            w = model.get_submodule(name).weight
            k = int(round(sparsity * w.numel()))
            if k == 0:
                continue
            threshold = w.abs().flatten().kthvalue(k).values
            mask = w.abs() > threshold
            w.mul_(mask)
            masks[name] = mask
    return masks


def mlp_blocks(model) -> list:
    """The MLP module of every block, if the model has Llama-style gated MLPs; else raise."""
    blocks = [m for n, m in model.named_modules()
              if all(hasattr(m, p) for p in ("gate_proj", "up_proj", "down_proj"))]
    if not blocks:
        raise ValueError(f"structured pruning needs Llama-style MLPs (gate_proj/up_proj/down_proj); "
                         f"{type(model).__name__} has none: use prune.kind unstructured")
    return blocks


def prune_mlp_channels(model, sparsity: float) -> int:
    """Remove the lowest-norm intermediate channels of every MLP; returns the new intermediate size."""
    import torch

    blocks = mlp_blocks(model)
    width = blocks[0].gate_proj.out_features
    keep = max(1, int(round(width * (1 - sparsity))))
    with torch.no_grad():
        for mlp in blocks:
            score = (mlp.gate_proj.weight.norm(dim=1) + mlp.up_proj.weight.norm(dim=1)
                     + mlp.down_proj.weight.norm(dim=0))
            idx = score.topk(keep).indices.sort().values
            for attr, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
                old = getattr(mlp, attr)
                new = torch.nn.Linear(old.in_features if dim == 0 else keep, keep if dim == 0 else old.out_features,
                                      bias=old.bias is not None, dtype=old.weight.dtype)
                new.weight.copy_(old.weight.index_select(dim, idx))
                if old.bias is not None:
                    new.bias.copy_(old.bias[idx] if dim == 0 else old.bias)
                setattr(mlp, attr, new)
    model.config.intermediate_size = keep
    return keep


def sparsity_of(model, skip: list[str]) -> float:
    """Share of exactly-zero weights over the prunable Linear layers."""
    zeros = total = 0
    for name in linear_names(model, skip):
        w = model.get_submodule(name).weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


def run_prune(cfg, model, corpus_dir: str | Path | None, tokenizer, log=None) -> dict[str, float]:
    """Prune ``model`` in place per ``cfg`` (a PruneConfig), then optionally recover; returns metrics."""
    import torch

    from shipyard.optimize.text_train import corpus_blocks, eval_loss, lm_loss, train_steps

    n_before = sum(p.numel() for p in model.parameters())
    masks = {}
    if cfg.kind == "unstructured":
        masks = unstructured_masks(model, cfg.sparsity, cfg.skip_modules)
    else:
        prune_mlp_channels(model, cfg.sparsity)
    out = {"prune.params_before": float(n_before),
           "prune.params_after": float(sum(p.numel() for p in model.parameters())),
           "prune.weight_sparsity": sparsity_of(model, cfg.skip_modules)}
    if cfg.recover_steps:
        if corpus_dir is None:
            raise ValueError("prune.recover_steps > 0 needs a corpus to recover on")
        blocks, heldout = corpus_blocks(corpus_dir, tokenizer, cfg.seq_len)
        pruned_loss = eval_loss(model, heldout, lm_loss)

        def reapply():
            with torch.no_grad():
                for name, mask in masks.items():
                    model.get_submodule(name).weight.mul_(mask)

        train_steps(model, [p for p in model.parameters() if p.requires_grad], blocks, lm_loss,
                    cfg.recover_steps, cfg.lr, cfg.batch_size, cfg.seed, log, reapply)
        out.update({"prune.heldout_loss_pruned": pruned_loss,
                    "prune.heldout_loss_recovered": eval_loss(model, heldout, lm_loss),
                    "prune.weight_sparsity_after_recovery": sparsity_of(model, cfg.skip_modules)})
    return out
