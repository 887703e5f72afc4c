"""Pretrain loop overhead vs a bare PyTorch loop, same model/data/steps, in one run.

    .venv/bin/python benchmarks/train_overhead.py                 # CPU, a ~3M-parameter Llama
    .venv/bin/python benchmarks/train_overhead.py --gpt2-124m     # GPU: GPT-2 small in bf16, prints MFU

The bare loop is what nanoGPT's train.py does per step (forward, backward, clip, AdamW, zero_grad)
with nothing else. Ours is ``shipyard.train.loop.fit``: warmup+cosine, accumulation bookkeeping,
per-micro-batch generators, deferred NaN checks, logging and MFU. Both are timed end to end with
the wall clock, alternating A/B/A/B so drift (thermal, other load) hits both; the target is
ours ≥ 0.97 × bare tokens/s. Data are random token ids: throughput does not depend on content.
"""

from __future__ import annotations

import argparse
import statistics
import time


def bare_loop(model, data, steps: int, batch: int, lr: float, device: str, dtype) -> float:
    import torch

    cuda = device.startswith("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, fused=cuda or None)
    gen = torch.Generator().manual_seed(0)
    model.train()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        x = data[torch.randint(len(data), (batch,), generator=gen)]
        x = (x.pin_memory() if cuda else x).to(device, non_blocking=True)  # as nanoGPT's get_batch
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()
    if cuda:
        torch.cuda.synchronize()
    return steps * batch * data.shape[1] / (time.perf_counter() - t0)


def shipyard_loop(cfg, model, objective, data, dist) -> tuple[float, dict]:
    import torch

    from shipyard.train.loop import fit

    if dist.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    state, summary = fit(cfg, model, objective, data[1:], data[:1], dist, None, lambda m, s: None)
    if dist.device.startswith("cuda"):
        torch.cuda.synchronize()
    return state.tokens / (time.perf_counter() - t0), summary


def main() -> None:
    import torch

    from shipyard.models.builders import build_model, packed_causal_attention
    from shipyard.train.distributed import Dist
    from shipyard.train.objectives import Objective
    from shipyard.train.pretrain_config import PretrainConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpt2-124m", action="store_true", help="GPT-2 small, context 1024, bf16 (needs a GPU)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="micro-batch (default 16 for --gpt2-124m, else 8)")
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds; the median is reported")
    ap.add_argument("--masked-attention", action="store_true",
                    help="keep transformers' explicit causal mask (what pretrain did before packed_causal_attention)")
    args = ap.parse_args()

    dist = Dist.from_env()
    if args.gpt2_124m:
        if not dist.device.startswith("cuda"):
            raise SystemExit("--gpt2-124m needs a CUDA GPU")
        cfg = PretrainConfig(architecture="gpt2", hidden_size=768, num_layers=12, num_heads=12,
                             intermediate_size=3072, context_length=1024, batch_size=args.batch or 16,
                             max_steps=args.steps or 30, warmup_steps=2, lr=6e-4, precision="bf16",
                             compile=True, checkpoint_every=0, log_every=10)
        vocab = 50304  # GPT-2's 50257 rounded up to a multiple of 64, as nanoGPT does
    else:
        cfg = PretrainConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=688,
                             context_length=256, batch_size=args.batch or 8, max_steps=args.steps or 40, warmup_steps=4,
                             lr=1e-3, checkpoint_every=0, log_every=10)
        vocab = 4096

    class Tok:  # what build_model and Objective read from a tokenizer
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

        def __len__(self):
            return vocab

    gen = torch.Generator().manual_seed(0)
    data = torch.randint(3, vocab, (max(cfg.batch_size * cfg.max_steps, 64) + 1, cfg.context_length), generator=gen)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else None

    def fresh():
        torch.manual_seed(0)
        model = build_model(cfg, Tok()).to(dist.device)
        if not args.masked_attention:
            packed_causal_attention(model)  # both loops: SDPA's is_causal, as nanoGPT's attention
        if cfg.compile and dist.device.startswith("cuda"):
            return torch.compile(model)
        return model

    # Warm up both paths once (allocator, kernels, torch.compile), untimed.
    warm = cfg.model_copy(update={"max_steps": 3, "warmup_steps": 1})
    bare_loop(fresh(), data, 3, cfg.batch_size, cfg.lr, dist.device, dtype)
    shipyard_loop(warm.model_copy(update={"compile": False}), fresh(), Objective(warm, Tok()), data, dist)

    bare, ours, summary = [], [], {}
    for _ in range(args.rounds):
        bare.append(bare_loop(fresh(), data, cfg.max_steps, cfg.batch_size, cfg.lr, dist.device, dtype))
        tps, summary = shipyard_loop(cfg.model_copy(update={"compile": False}), fresh(), Objective(cfg, Tok()),
                                     data, dist)
        ours.append(tps)
    b, o = statistics.median(bare), statistics.median(ours)
    n = sum(p.numel() for p in fresh().parameters())
    print(f"model: {cfg.architecture} {n / 1e6:.1f}M params, context {cfg.context_length}, batch {cfg.batch_size}, "
          f"{cfg.max_steps} steps x {args.rounds} rounds on {dist.device} ({cfg.precision}, "
          f"{torch.get_num_threads()} threads)")
    print(f"bare PyTorch loop : {b:10.0f} tokens/s   (rounds: {', '.join(f'{x:.0f}' for x in bare)})")
    print(f"shipyard fit()    : {o:10.0f} tokens/s   (rounds: {', '.join(f'{x:.0f}' for x in ours)})")
    print(f"ratio shipyard/bare: {o / b:.3f}  (overhead {100 * (1 - o / b):+.1f}%; target ≤ 3%)")
    if "mfu" in summary:
        from shipyard.train.sizing import device_peak_flops

        per_token, peak = summary["model_flops_per_token"], device_peak_flops(torch.cuda.get_device_name(), "bf16")
        print(f"MFU (shipyard, last round): {100 * summary['mfu']:.1f}%  bare loop: {100 * per_token * b / peak:.1f}%  "
              f"({per_token / 1e9:.2f} GFLOP/token, peak {peak / 1e12:.0f} TFLOP/s bf16 dense, "
              f"{torch.cuda.get_device_name()})")


if __name__ == "__main__":
    main()
