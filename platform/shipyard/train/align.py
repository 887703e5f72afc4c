"""align stage: preference alignment of the fine-tuned model with DPO (TRL's DPOTrainer).

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # after finetune

The reference policy is a frozen copy of the fine-tuned model; beta sets how hard the policy is
pulled back to it. Reports the DPO reward margin and accuracy (chosen log-ratio above rejected).
"""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.config import AlignConfig
from shipyard.data.preferences import load_preferences
from shipyard.data.shards import write_quarantine
from shipyard.models.causal_lm import ADAPTER_FILE
from shipyard.train.hf import MetricsLogger, log_forwarder, quiet, split_holdout, trainer_args


def run_align(
    cfg: AlignConfig,
    policy_dir: str | Path,
    output_dir: str | Path,
    log: MetricsLogger = lambda m, s: None,
) -> dict[str, float]:
    """DPO-align the model in ``policy_dir`` on ``cfg.train``; save the aligned model to ``output_dir``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from shipyard.models.causal_lm import load_tokenizer

    output_dir = Path(output_dir)
    rows, bad = load_preferences(cfg.train, cfg.max_examples)
    train, held = split_holdout(rows, minimum=16)
    tokenizer = load_tokenizer(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir), use_safetensors=True)
    adapter = None
    if (Path(policy_dir) / ADAPTER_FILE).exists():
        # An unmerged adapter (prompt tuning): DPO trains the adapter; TRL's reference is the same
        # base with the adapter disabled, so no second copy of the model is held.
        from peft import PeftModel

        adapter = json.loads((Path(policy_dir) / ADAPTER_FILE).read_text())["adapter"]
        model = PeftModel.from_pretrained(model, str(Path(policy_dir) / adapter))
        # PEFT refuses is_trainable=True for prompt-learning adapters it loads; unfreeze the soft prompt.
        for p in model.prompt_encoder.parameters() if model.peft_config["default"].is_prompt_learning else []:
            p.requires_grad_(True)
    args = DPOConfig(**trainer_args(cfg), beta=cfg.beta, max_length=cfg.max_length)
    trainer = quiet(DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                               eval_dataset=Dataset.from_list(held), processing_class=tokenizer,
                               callbacks=[log_forwarder(log)]))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    if adapter:
        trainer.model.get_base_model().save_pretrained(output_dir, safe_serialization=True)
        trainer.model.save_pretrained(output_dir / adapter)
        (output_dir / ADAPTER_FILE).write_text((Path(policy_dir) / ADAPTER_FILE).read_text())
    else:
        trainer.model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    write_quarantine(output_dir / "quarantine.jsonl", bad)
    pick = lambda d, k: float(d.get(f"eval_{k}", float("nan")))  # noqa: E731
    return {"eval_loss_before": pick(before, "loss"), "eval_loss": pick(after, "loss"),
            "reward_margin_before": pick(before, "rewards/margins"),
            "reward_margin": pick(after, "rewards/margins"),
            "reward_accuracy": pick(after, "rewards/accuracies"),
            "train_pairs": len(train), "quarantined": len(bad)}
