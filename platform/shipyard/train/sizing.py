"""Compute-optimal sizing (Chinchilla) and the compute a run spends.

    python -c "from shipyard.train.sizing import chinchilla; print(chinchilla(1e18))"

Training compute C ≈ 6·N·D FLOPs (N parameters, D tokens: 2 for the forward pass, 4 for the
backward). Hoffmann et al. (2022) found the loss-optimal split at D ≈ 20·N, so C = 120·N² and
N = sqrt(C / 120). A petaFLOP/s-day is 1e15 FLOP/s for 86,400 s = 8.64e19 FLOPs.
"""

from __future__ import annotations

import math

TOKENS_PER_PARAM = 20
PF_DAY = 1e15 * 86_400
HEAD_DIM = 64
ASPECT = 64  # d_model ≈ 64 · n_layers: the depth/width ratio of GPT-2/Chinchilla-family models


def chinchilla(compute_flops: float) -> dict[str, float]:
    """Compute-optimal parameters and tokens for a budget of ``compute_flops``."""
    n = math.sqrt(compute_flops / (6 * TOKENS_PER_PARAM))
    return {"params": n, "tokens": TOKENS_PER_PARAM * n, "flops": compute_flops, "pf_days": compute_flops / PF_DAY}


def chinchilla_shape(compute_flops: float, tokens_per_step: int) -> dict[str, int]:
    """Transformer dimensions with ~N = sqrt(C/120) block parameters, and the steps for D = 20·N tokens.

    A block holds ~12·d² parameters (4·d² attention, 8·d² MLP, for both the 4·d GELU MLP and
    Llama's 3 matrices of 8/3·d), so 12·L·d² = N with d = 64·L fixes L, then d rounds to whole heads.
    """
    opt = chinchilla(compute_flops)
    layers = max(1, round((opt["params"] / (12 * ASPECT**2)) ** (1 / 3)))
    d = math.sqrt(opt["params"] / (12 * layers))
    heads = max(1, round(d / HEAD_DIM))
    hidden = heads * HEAD_DIM
    return {
        "hidden_size": hidden,
        "num_layers": layers,
        "num_heads": heads,
        "intermediate_size": 8 * round(8 / 3 * hidden / 8),
        "max_steps": max(1, math.ceil(opt["tokens"] / tokens_per_step)),
    }


def training_flops(n_params: int, tokens: int) -> dict[str, float]:
    """What a run spent: 6·N·D FLOPs and the same in petaFLOP/s-days."""
    flops = 6 * n_params * tokens
    return {"train_flops": flops, "train_pf_days": flops / PF_DAY}


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> float:
    """Model FLOPs per trained token (PaLM appendix B): 6·N plus the attention scores 12·L·d·T."""
    return 6 * n_params + 12 * n_layers * hidden * seq_len


# Dense peak FLOP/s by GPU name fragment and compute dtype (vendor datasheets, no sparsity).
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 183e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 62e12},
}


def device_peak_flops(device_name: str, dtype: str) -> float | None:
    """The datasheet peak for a known GPU (tensor cores; fp32 means TF32), else None."""
    for fragment, peaks in PEAK_FLOPS.items():
        if fragment in device_name:
            return peaks[dtype]
    return None
