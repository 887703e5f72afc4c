"""finetune stage: instruction fine-tuning with TRL's SFTTrainer — full, LoRA, QLoRA or prompt tuning.

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # fourth step

Rows (instruction/response or chat messages) become (prompt, completion) pairs through the
tokenizer's chat template; the loss covers completion tokens only. Several tasks are mixed by
weight into one adapter, or trained as one adapter per task (``adapters: per_task``). Adapters
are always saved on their own under ``adapters/<name>/``; with ``merge`` the output directory also
holds base + (first) adapter merged, so later stages load a plain model. Prompt tuning cannot be
merged: the output holds the base weights and ``shipyard_adapter.json`` naming the adapter that
``load_causal_lm`` attaches. A catastrophic-forgetting check scores the base task's held-out
perplexity before and after, and can fail the stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.data.sft_data import load_conversations, mix, to_pair
from shipyard.data.shards import Quarantined, split_holdout, write_quarantine
from shipyard.models.causal_lm import ADAPTER_FILE
from shipyard.schema import MetricsLogger
from shipyard.train.finetune_config import FinetuneConfig
from shipyard.train.hf_trainer import log_forwarder, quiet, trainer_args


class ForgettingError(RuntimeError):
    """The base task got worse than ``forgetting.max_ratio`` allows."""


def check_device(cfg: FinetuneConfig) -> None:
    """QLoRA's 4-bit base needs CUDA and bitsandbytes: say so before loading anything."""
    if cfg.method != "qlora":
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError("finetune.method qlora loads the base in 4 bits with bitsandbytes, which needs a CUDA "
                         "GPU; this machine has none: use method lora (same adapters, full-precision base)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError("finetune.method qlora needs bitsandbytes: pip install 'shipyard[gpu]'") from None


def peft_config(cfg: FinetuneConfig, tokenizer, base_dir):
    import peft

    if cfg.method in ("lora", "qlora"):
        return peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                               target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
    if cfg.method == "prompt_tuning":
        pt = cfg.prompt_tuning
        init = ({"prompt_tuning_init": peft.PromptTuningInit.TEXT, "prompt_tuning_init_text": pt.init_text,
                 "tokenizer_name_or_path": str(base_dir)} if pt.init_text else
                {"prompt_tuning_init": peft.PromptTuningInit.RANDOM})
        return peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=pt.num_virtual_tokens, **init)
    return None


def load_base(cfg: FinetuneConfig, base_dir):
    import torch
    from transformers import AutoModelForCausalLM

    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        q = cfg.qlora
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                                 bnb_4bit_use_double_quant=q.double_quant,
                                 bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype))
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), quantization_config=bnb, device_map={"": 0},
                                                     use_safetensors=True, trust_remote_code=False)
        return prepare_model_for_kbit_training(model)
    return AutoModelForCausalLM.from_pretrained(str(base_dir), use_safetensors=True, trust_remote_code=False,
                                                dtype=torch.float32)


def _base_perplexity(model, tokenizer, cfg: FinetuneConfig) -> float | None:
    if not cfg.forgetting.heldout_text:
        return None
    from shipyard.data.shards import Row, read_rows
    from shipyard.models.inference import perplexity

    texts = []
    for item in read_rows(cfg.forgetting.heldout_text, "text"):
        if isinstance(item, Row):
            texts.append(item.text)
        if len(texts) >= cfg.forgetting.max_docs:
            break
    was_training = model.training
    model.eval()
    try:
        return perplexity(model, tokenizer, texts, cfg.max_length)
    finally:
        model.train(was_training)


def run_finetune(
    cfg: FinetuneConfig,
    base_model_dir: str | Path,
    output_dir: str | Path,
    log: MetricsLogger = lambda m, s: None,
) -> dict[str, float]:
    """Fine-tune the model in ``base_model_dir``; write adapters and the output model to ``output_dir``.

    Returns:
        Metrics: held-out loss before/after (overall and per task), trainable parameters and
        fraction, rows per task, quarantined rows, base-task perplexity before/after.

    Raises:
        ValueError: bad data or an impossible method for this machine (QLoRA without CUDA).
        ForgettingError: the base task's perplexity grew beyond ``forgetting.max_ratio``.
    """
    from shipyard.models.causal_lm import load_tokenizer

    check_device(cfg)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(base_model_dir)
    context = json.loads((Path(base_model_dir) / "config.json").read_text()).get("max_position_embeddings")
    if context and cfg.max_length > context:
        raise ValueError(f"finetune.max_length {cfg.max_length} exceeds the base model's context {context}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_by_task, held_by_task, bad = _task_rows(cfg, tokenizer)
    groups = _adapter_groups(cfg, train_by_task, held_by_task)
    metrics: dict[str, float] = {"quarantined": len(bad)}
    first_model, first_adapter = None, None
    for name, rows, held in groups:
        model = load_base(cfg, base_model_dir)
        if first_model is None:
            metrics["forgetting_ppl_before"] = _base_perplexity(model, tokenizer, cfg) or float("nan")
        trained = _train_adapter(cfg, model, tokenizer, rows, held, base_model_dir, log, metrics,
                                 prefix="" if len(groups) == 1 else f"{name}.")
        if cfg.method != "full":
            trained.save_pretrained(output_dir / "adapters" / name)
        if first_model is None:
            first_model, first_adapter = trained, name
    for task, rows in train_by_task.items():
        metrics[f"rows.{task}"] = len(rows)

    out_model = _write_output(cfg, first_model, first_adapter, base_model_dir, output_dir)
    tokenizer.save_pretrained(output_dir)
    write_quarantine(output_dir / "quarantine.jsonl", bad)
    _check_forgetting(cfg, out_model, tokenizer, metrics, log)
    return metrics


def _task_rows(cfg: FinetuneConfig, tokenizer) -> tuple[dict, dict, list]:
    """(train rows by task, held-out rows by task, quarantined rows): a prompt with no room left for its
    response is quarantined (TRL would drop it silently), and every task keeps at least one row to hold out."""
    train_by_task, held_by_task, bad = {}, {}, []
    for task in cfg.task_list():
        convs, q = load_conversations(task.train)
        bad.extend(q)
        pairs = []
        for msgs, source in convs:
            pair = to_pair(msgs, tokenizer)
            n = len(tokenizer(pair["prompt"], add_special_tokens=False, verbose=False)["input_ids"])
            if n >= cfg.max_length:
                bad.append(Quarantined(json.dumps({"messages": msgs}, ensure_ascii=False), source,
                                       f"prompt is {n} tokens, max_length {cfg.max_length} leaves no room for "
                                       f"the response", "too_long"))
            else:
                pairs.append(pair)
        if len(pairs) < 2:
            raise ValueError(f"{task.train}: task {task.name!r} has {len(pairs)} usable rows of {len(convs) + len(q)} "
                             f"({len(q)} malformed, {len(convs) - len(pairs)} longer than max_length "
                             f"{cfg.max_length}); at least 2 are needed (one to train, one to hold out)")
        train, held = split_holdout(pairs, minimum=min(16, max(1, len(pairs) // 4)))
        train_by_task[task.name] = train[: task.max_examples] if task.max_examples else train
        held_by_task[task.name] = held[: cfg.eval_examples]
    return train_by_task, held_by_task, bad


def _adapter_groups(cfg: FinetuneConfig, train_by_task: dict, held_by_task: dict) -> list[tuple[str, list, dict]]:
    """(adapter name, training rows, held-out rows by task): one adapter per task, or one for the mixture."""
    if cfg.adapters == "per_task":
        return [(name, rows, {name: held_by_task[name]}) for name, rows in train_by_task.items()]
    if len(train_by_task) > 1:
        weights = {t.name: t.weight for t in cfg.task_list()}
        return [("mixture", mix(train_by_task, weights, cfg.max_examples, cfg.seed), held_by_task)]
    return [("default", list(train_by_task.values())[0][: cfg.max_examples or None], held_by_task)]


def _train_adapter(cfg, model, tokenizer, rows, held, base_model_dir, log, metrics: dict, prefix: str):
    """Train one adapter (or the full model) on ``rows``; its held-out losses before and after go to ``metrics``."""
    trainer = _trainer(cfg, model, tokenizer, rows, held, base_model_dir, log)
    before = _eval(trainer, held, cfg)
    trainer.train()
    after = _eval(trainer, held, cfg)
    metrics.update({f"{prefix}eval_loss_before": before["all"], f"{prefix}eval_loss": after["all"],
                    f"{prefix}train_rows": len(rows)})
    if len(held) > 1:
        metrics.update({f"{prefix}eval_loss.{t}": v for t, v in after.items() if t != "all"})
    trained = trainer.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trained.parameters())
    metrics.update(trainable_params=trainable, total_params=total, trainable_fraction=trainable / total)
    return trained


def _check_forgetting(cfg: FinetuneConfig, out_model, tokenizer, metrics: dict, log) -> None:
    """The base task's perplexity after vs before; past ``forgetting.max_ratio`` the stage fails."""
    after_ppl = _base_perplexity(out_model, tokenizer, cfg)
    if after_ppl is None:
        metrics.pop("forgetting_ppl_before", None)
        return
    ratio = after_ppl / metrics["forgetting_ppl_before"]
    metrics.update(forgetting_ppl_after=after_ppl, forgetting_ppl_ratio=ratio)
    log({k: metrics[k] for k in ("forgetting_ppl_before", "forgetting_ppl_after", "forgetting_ppl_ratio")},
        cfg.max_steps)
    limit = cfg.forgetting.max_ratio
    if limit is not None and ratio > limit:
        raise ForgettingError(
            f"catastrophic forgetting: base-task perplexity {metrics['forgetting_ppl_before']:.2f} -> "
            f"{after_ppl:.2f} (x{ratio:.3f}) exceeds finetune.forgetting.max_ratio {limit}; lower lr, "
            f"use LoRA, fewer steps, or mix base-task data into the tasks")


def _trainer(cfg, model, tokenizer, rows, held, base_model_dir, log):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    def ds(rs):
        return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rs])

    # Several tasks: one eval set per task (TRL evaluates each and reports eval_<task>_loss).
    evals = ds(next(iter(held.values()))) if len(held) == 1 else {t: ds(rs) for t, rs in held.items()}
    args = SFTConfig(**trainer_args(cfg), max_length=cfg.max_length, completion_only_loss=True, packing=False)
    return quiet(SFTTrainer(model=model, args=args, train_dataset=ds(rows),
                            eval_dataset=evals, processing_class=tokenizer,
                            peft_config=peft_config(cfg, tokenizer, base_model_dir),
                            callbacks=[log_forwarder(log)]))


def _eval(trainer, held: dict[str, list], cfg) -> dict[str, float]:
    """Held-out loss: overall ("all": the mean over tasks) and per task when there are several."""
    res = trainer.evaluate()
    if len(held) == 1:
        out = {"all": res.get("eval_loss")}
    else:
        out = {t: res.get(f"eval_{t}_loss") for t in held}
        out["all"] = None if None in out.values() else sum(out.values()) / len(held)
    if out["all"] is None:
        raise ValueError(f"no held-out example keeps a response token within max_length={cfg.max_length} "
                         f"tokens; raise finetune.max_length")
    return out


def _write_output(cfg, trained, adapter: str, base_model_dir, output_dir: Path):
    """The output model: merged (full, or LoRA with merge) or base weights + a named adapter."""
    if cfg.method == "full":
        trained.save_pretrained(output_dir, safe_serialization=True)
        return trained
    if cfg.method in ("lora", "qlora") and cfg.merge:
        from shipyard.models.adapters import merge_adapter

        return merge_adapter(base_model_dir, output_dir / "adapters" / adapter, output_dir)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_model_dir), use_safetensors=True)
    base.save_pretrained(output_dir, safe_serialization=True)
    (output_dir / ADAPTER_FILE).write_text(json.dumps({"adapter": f"adapters/{adapter}", "method": cfg.method}))
    from shipyard.models.causal_lm import load_causal_lm

    return load_causal_lm(output_dir)
