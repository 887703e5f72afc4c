"""finetune stage: instruction fine-tuning (LoRA or full) with TRL's SFTTrainer.

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # fourth step

Rows {instruction, input?, response} become (prompt, completion) pairs in the shared template;
the loss covers completion tokens only. With LoRA the adapter is saved on its own under
``adapter/`` and merged into the base for the output model, so later stages load a plain model.
"""

from __future__ import annotations

from pathlib import Path

from shipyard.config import FinetuneConfig
from shipyard.data.shards import read_records, write_quarantine
from shipyard.templates import format_prompt
from shipyard.train.hf import MetricsLogger, log_forwarder, quiet, split_holdout, trainer_args


def load_instructions(path: str | Path, limit: int | None = None):
    rows, bad = read_records(path, ("instruction", "response"))
    pairs = [{"prompt": format_prompt(r["instruction"], r.get("input") or ""), "completion": r["response"]}
             for r in rows]
    return (pairs[:limit] if limit else pairs), bad


def run_finetune(
    cfg: FinetuneConfig,
    base_model_dir: str | Path,
    output_dir: str | Path,
    log: MetricsLogger = lambda m, s: None,
) -> dict[str, float]:
    """Fine-tune the model in ``base_model_dir`` on ``cfg.train``; save the merged model to ``output_dir``.

    Returns:
        Metrics: held-out loss before and after, trainable parameter count, quarantined rows.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from shipyard.models.causal_lm import load_tokenizer

    output_dir = Path(output_dir)
    pairs, bad = load_instructions(cfg.train, cfg.max_examples)
    train, held = split_holdout(pairs, minimum=16)
    tokenizer = load_tokenizer(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), use_safetensors=True)
    peft_config = None
    if cfg.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                 target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
    args = SFTConfig(**trainer_args(cfg), max_length=cfg.max_length,
                     completion_only_loss=True, packing=False)
    trainer = quiet(SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                               eval_dataset=Dataset.from_list(held), processing_class=tokenizer,
                               peft_config=peft_config, callbacks=[log_forwarder(log)]))
    before = trainer.evaluate().get("eval_loss")
    if before is None:
        raise ValueError(f"{cfg.train}: no held-out example keeps a response token within max_length="
                         f"{cfg.max_length} tokens; raise finetune.max_length or use a tokenizer with more merges")
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    trained = trainer.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    if cfg.method == "lora":
        trained.save_pretrained(output_dir / "adapter")
        trained = trained.merge_and_unload()
    trained.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    write_quarantine(output_dir / "quarantine.jsonl", bad)
    return {"eval_loss_before": before, "eval_loss": after, "trainable_params": trainable,
            "train_rows": len(train), "quarantined": len(bad)}
