"""PPO: where an iteration's time goes, and the memory a LoRA policy saves by reusing its base as reference.

    .venv/bin/python benchmarks/ppo_memory.py              # a 30M Llama built from a config (CPU: ~2 min)
    .venv/bin/python benchmarks/ppo_memory.py --iterations 5 --batch 16

Three variants of our PPO (shipyard.train.ppo), each in its own subprocess so its peak is its own:

- ``lora + disabled-adapter ref``: LoRA on the policy; the reference is the same module with the
  adapters disabled (the default: no second copy);
- ``lora + separate ref``: LoRA on the policy and a frozen deep copy as reference (the baseline);
- ``full + separate ref``: every weight trains; the reference must be a copy.

Same model, prompts (the demo preference prompts), keyword reward, sampling settings and seed.
Peak memory is what PPO added over the loaded policy: peak RSS minus RSS after loading (CPU) or
torch.cuda.max_memory_allocated minus allocated after loading (GPU). The time split is the mean
over iterations after the first of generation / reward scoring / update (rollout forward passes
of policy, value and reference included in update).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"lora_disabled_ref": "lora + disabled-adapter ref", "lora_separate_ref": "lora + separate ref",
            "full_separate_ref": "full + separate ref"}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_model(out: Path) -> None:
    """A 30M-parameter Llama and a 4096-token BPE tokenizer trained on the demo fortunes."""
    import json as _json

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from shipyard.data.train_tokenizer import run_train_tokenizer
    from shipyard.data.train_tokenizer_config import TokenizerConfig
    from shipyard.models.causal_lm import load_tokenizer

    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    lines = (REPO / "data/demo/raw/fortunes.txt").read_text(encoding="utf-8").splitlines()
    (corpus / "corpus.jsonl").write_text("".join(_json.dumps({"text": t}) + "\n" for t in lines if t.strip()))
    run_train_tokenizer(TokenizerConfig(vocab_size=4096, model_max_length=512, heldout_every=0), corpus, out / "model")
    tok = load_tokenizer(out / "model")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1376,
                                         num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                                         max_position_embeddings=512, tie_word_embeddings=True,
                                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id))
    model.save_pretrained(out / "model", safe_serialization=True)


def worker(variant: str, model_dir: str, iterations: int, batch: int, new_tokens: int) -> dict:
    import torch

    from shipyard.data.preferences import load_prompts
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.train.align_config import AlignConfig
    from shipyard.train.finetune_config import LoraConfig
    from shipyard.train.policy import load_policy
    from shipyard.train.ppo import PPOTrainer
    from shipyard.train.rl_rewards import RewardTerm, build_reward

    lora = LoraConfig(r=16, alpha=32, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    cfg = AlignConfig(method="ppo", train=str(REPO / "data/demo/preferences/train.jsonl"),
                      rewards=[RewardTerm(kind="keywords", keywords=["the", "a", "and"])],
                      lora=None if variant.startswith("full") else lora, max_length=128, batch_size=batch,
                      max_steps=iterations, lr=1e-4, generation={"max_new_tokens": new_tokens},
                      ppo={"minibatch_size": max(1, batch // 2), "epochs": 2, "checkpoint_every": 0,
                           "separate_reference": variant.endswith("separate_ref")})
    tok = load_tokenizer(model_dir)
    prompts, _ = load_prompts(cfg.train, 256, tok)
    cuda = torch.cuda.is_available()
    model = load_policy(model_dir, cfg.lora, "ppo")
    if cuda:
        model.cuda()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mb()
    history = []
    trainer = PPOTrainer(cfg, model, tok, prompts, build_reward(cfg.rewards, None, 128),
                         log=lambda m, s: history.append(m))
    trainer.train()
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_mb()) - base
    later = history[1:] or history
    mean = lambda k: sum(h[k] for h in later) / len(later)
    return {"variant": variant, "device": "cuda" if cuda else "cpu", "peak_mb": peak,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "generate_s": mean("time_generate"), "score_s": mean("time_score"), "update_s": mean("time_update")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model_dir, args.iterations, args.batch, args.new_tokens)))
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="shipyard-ppo-bench-") as tmp:
        build_model(Path(tmp))
        rows = []
        for v in VARIANTS:
            cmd = [sys.executable, __file__, "--worker", v, "--model-dir", str(Path(tmp) / "model"),
                   "--iterations", str(args.iterations), "--batch", str(args.batch),
                   "--new-tokens", str(args.new_tokens)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
    baseline = rows[1]
    print(f"PPO on a {rows[0]['params'] / 1e6:.1f}M Llama, {args.batch} prompts x {args.new_tokens} new tokens, "
          f"{args.iterations} iterations, on {rows[0]['device']}")
    print(f"{'variant':<30}{'trainable':>12}{'peak MB':>9}{'vs sep.':>8}{'gen s':>8}{'score s':>9}{'update s':>10}")
    for r in rows:
        print(f"{VARIANTS[r['variant']]:<30}{r['trainable']:>12,}{r['peak_mb']:>9.0f}"
              f"{r['peak_mb'] / baseline['peak_mb']:>8.2f}{r['generate_s']:>8.2f}{r['score_s']:>9.3f}"
              f"{r['update_s']:>10.2f}")
    saved = baseline["peak_mb"] - rows[0]["peak_mb"]
    print(f"disabled-adapter reference saves {saved:.0f} MB ({saved / baseline['peak_mb']:.0%} of the PPO peak) "
          f"against a separate reference copy")


if __name__ == "__main__":
    main()
