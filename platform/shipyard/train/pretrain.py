"""pretrain stage: a language model trained from scratch on the clean corpus.

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # third step

Objectives: causal LM (Llama, GPT-2), masked LM (BERT, RoBERTa), span corruption (T5). Documents
are tokenized, joined with a separator and packed into fixed blocks (no padding wasted); a share
of blocks is held out for validation loss, and for bits per byte beside unigram and bigram
baselines counted on the training blocks (``pretraining.json``; causal LM). AdamW, warmup then
cosine, gradient clipping and accumulation, bf16 on GPUs that have it (fp32 on CPU). The loop
(``loop.py``) checkpoints every N steps and at SIGTERM; ``resume: auto`` continues the newest
checkpoint. With
``nproc_per_node > 1`` the same loop runs under torchrun (DDP or FSDP; gloo on CPU).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from shipyard.schema import MetricsLogger
from shipyard.train.pretrain_config import PretrainConfig
from shipyard.train.sizing import chinchilla, training_flops

RESULT_FILE = "pretrain_result.json"
BASELINES_FILE = "pretraining.json"  # held-out bits per byte: the model, unigram, bigram (write_baselines)


def _noop(metrics: dict[str, float], step: int) -> None:
    return None


def training_digest(cfg: PretrainConfig) -> str:
    """Hash of what makes checkpoints compatible (the run's length and logging may change)."""
    keep = cfg.model_dump(exclude={"max_steps", "log_every", "checkpoint_every", "keep_checkpoints",
                                   "checkpoint_dir", "resume", "compile", "peak_tflops"})
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def run_pretrain(
    cfg: PretrainConfig,
    corpus_dir: str | Path,
    tokenizer_dir: str | Path,
    output_dir: str | Path,
    log: MetricsLogger = _noop,
    checkpoint_dir: str | Path | None = None,
) -> dict[str, float]:
    """Pretrain on ``corpus_dir`` with the tokenizer in ``tokenizer_dir``; save model + tokenizer to ``output_dir``.

    Args:
        checkpoint_dir: overrides ``cfg.checkpoint_dir``; None and no config value: no checkpoints.

    Returns:
        Metrics: initial/final validation loss, tokens, tokens/s, MFU (when the peak is known),
        parameters, compute in FLOPs and petaFLOP/s-days, and the Chinchilla-optimal size for it.
    """
    if cfg.nodes > 1:
        raise ValueError("pretrain.nodes > 1 runs as a Kubeflow Trainer TrainJob on a cluster "
                         "(shipyard.kube.trainjob); locally use nproc_per_node")
    checkpoint_dir = checkpoint_dir or cfg.checkpoint_dir
    if cfg.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(cfg, corpus_dir, tokenizer_dir, output_dir, log, checkpoint_dir)
    return train_process(cfg, corpus_dir, tokenizer_dir, output_dir, log, checkpoint_dir)


def train_process(cfg, corpus_dir, tokenizer_dir, output_dir, log, checkpoint_dir) -> dict[str, float]:
    """One training process (the only one, or one rank under torchrun)."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from shipyard.models.builders import build_model, packed_causal_attention, prepare_tokenizer
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.train.checkpoint_store import S3Mirror, is_remote, local_cache
    from shipyard.train.distributed import Dist
    from shipyard.train.loop import fit
    from shipyard.train.objectives import Objective, pack_corpus

    budget = cfg.compute_budget_flops
    cfg = cfg.sized()
    mirror = None
    if is_remote(checkpoint_dir):  # s3://: written locally, mirrored to the artifact store
        mirror, checkpoint_dir = S3Mirror(checkpoint_dir), local_cache(checkpoint_dir)
    dist = Dist.from_env()
    try:
        torch.manual_seed(cfg.seed)
        tokenizer = load_tokenizer(tokenizer_dir)
        added = prepare_tokenizer(tokenizer, cfg.objective, Objective.sentinels_needed(cfg))
        blocks = pack_corpus(corpus_dir, tokenizer, cfg.context_length)
        perm = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(cfg.seed))
        n_val = max(1, int(len(blocks) * cfg.eval_fraction))
        val, train = blocks[perm[:n_val]], blocks[perm[n_val:]]
        need = cfg.batch_size * cfg.grad_accum_steps * dist.world
        if len(train) < need:
            raise ValueError(f"corpus too small: {len(train)} training blocks of {cfg.context_length} tokens, "
                             f"but one optimizer step needs {need} (batch_size x grad_accum_steps x processes)")
        model = build_model(cfg, tokenizer)
        n_params = sum(p.numel() for p in model.parameters())
        attention = packed_causal_attention(model) if cfg.objective == "clm" else None
        state, summary = fit(cfg, model, Objective(cfg, tokenizer), train, val, dist, checkpoint_dir, log,
                             training_digest(cfg), mirror=mirror)
        if attention:
            model.set_attn_implementation(attention)  # back to plain SDPA (config.json never records it)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        seen: set[int] = set()
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) in seen:  # a tied weight (lm_head = embeddings): FSDP gathers it as a separate copy
                full.pop(name, None)
            seen.add(id(p))
        metrics = {
            **summary,
            "val_perplexity": _exp(summary["val_loss"]),
            "train_loss": sum(state.losses[-10:]) / len(state.losses[-10:]),
            "train_tokens": state.tokens,
            "corpus_tokens": blocks.numel(),
            "n_params": n_params,
            "steps": state.step,
            "added_special_tokens": len(added),
            **training_flops(n_params, state.tokens),
        }
        if budget:
            opt = chinchilla(budget)
            metrics.update(budget_flops=budget, chinchilla_params=opt["params"], chinchilla_tokens=opt["tokens"])
        if cfg.objective == "clm" and dist.world == 1:  # sharded weights: no single-process forward
            metrics.update(write_baselines(model, tokenizer, train, val, Path(output_dir)))
        if dist.main:
            output_dir = Path(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(output_dir, state_dict=full, safe_serialization=True)
            tokenizer.save_pretrained(output_dir)
            (output_dir / "loss_curve.json").write_text(json.dumps(state.losses))
            (output_dir / RESULT_FILE).write_text(json.dumps(metrics))
        dist.barrier()
        return metrics
    finally:
        dist.close()


def write_baselines(model, tokenizer, train, val, output_dir: Path) -> dict[str, float]:
    """The model's bits per byte on the held-out blocks beside unigram and bigram models counted on
    the training blocks, scored on the same positions; ``BASELINES_FILE`` keeps the per-block rows
    ``[bits, bytes]`` so the evaluate stage can report (and a gate require) a paired difference."""
    import torch

    from shipyard.eval.ngram import fit_ngrams, ngram_bits

    vocab = len(tokenizer)
    counted = ngram_bits(val, fit_ngrams(train), vocab)
    device = next(model.parameters()).device
    model_bits = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(val), 16):
            rows = val[i : i + 16].to(device)
            logp = torch.log_softmax(model(input_ids=rows).logits[:, :-1].float(), dim=-1)
            nats = -logp.gather(-1, rows[:, 1:, None]).squeeze(-1).sum(-1)
            model_bits.extend((nats / math.log(2)).tolist())
    model.train(was_training)
    n_bytes = [max(len(tokenizer.decode(b[1:].tolist(), skip_special_tokens=True).encode()), 1) for b in val]
    rows = {"val_bpb": [list(r) for r in zip(model_bits, n_bytes, strict=True)],
            **{f"{k}_bpb": [list(r) for r in zip(bits, n_bytes, strict=True)] for k, bits in counted.items()}}
    report = {k: sum(b for b, _ in r) / sum(n for _, n in r) for k, r in rows.items()}
    report["val_tokens"] = int(val[:, 1:].numel())
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / BASELINES_FILE).write_text(json.dumps({**report, "rows": rows}))
    return report


def _exp(x: float) -> float:
    import math

    return math.exp(min(x, 50.0))


def _launch_torchrun(cfg, corpus_dir, tokenizer_dir, output_dir, log, checkpoint_dir) -> dict[str, float]:
    """Run ``nproc_per_node`` copies of ``train_process`` under torchrun and collect rank 0's results."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    args = output_dir / ".launch.json"
    metrics_file = output_dir / ".metrics.jsonl"
    metrics_file.unlink(missing_ok=True)
    args.write_text(json.dumps({"config": cfg.model_dump(), "corpus": str(corpus_dir),
                                "tokenizer": str(tokenizer_dir), "output": str(output_dir),
                                "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
                                "metrics": str(metrics_file)}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={cfg.nproc_per_node}", "-m", "shipyard.train.launch", str(args)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if metrics_file.exists():
        for line in metrics_file.read_text().splitlines():
            rec = json.loads(line)
            log(rec["metrics"], rec["step"])
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun pretrain failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    args.unlink()
    metrics_file.unlink(missing_ok=True)
    return json.loads((output_dir / RESULT_FILE).read_text())
