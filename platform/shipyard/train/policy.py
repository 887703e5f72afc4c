"""The policy that alignment trains: load it (with or without adapters) and save what it became.

Three cases, shared by PPO, DPO and GRPO:

- the instruct model carries an unmerged adapter (``shipyard_adapter.json``, from finetune): that
  adapter keeps training, and the output keeps it unmerged beside the unchanged base;
- ``align.lora`` is set: fresh LoRA adapters train on the instruct weights and are merged into the
  output, so later stages see a plain model;
- neither: every weight trains.

With adapters the reference policy is the same module with the adapters disabled: no second copy
of the model is held in memory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shipyard.models.causal_lm import ADAPTER_FILE
from shipyard.train.finetune_config import LoraConfig


def existing_adapter(policy_dir: str | Path) -> str | None:
    path = Path(policy_dir) / ADAPTER_FILE
    return json.loads(path.read_text())["adapter"] if path.exists() else None


def load_policy(policy_dir: str | Path, lora: LoraConfig | None, method: str, seed: int = 0):
    """The trainable policy model (a PeftModel when adapters are involved).

    New LoRA adapters are initialized from ``seed``, not from whatever state the global RNG is in,
    so a run started anew and one resumed from a checkpoint train the same adapters.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(policy_dir), use_safetensors=True, trust_remote_code=False,
                                                 dtype=torch.float32)
    adapter = existing_adapter(policy_dir)
    if adapter and lora:
        raise ValueError(f"{policy_dir} already carries adapter {adapter!r}; align.lora would stack a second "
                         f"one. Drop align.lora (the existing adapter trains) or merge it first "
                         f"(`shipyard adapters merge`)")
    if adapter:
        from peft import PeftConfig, PeftModel

        adapter_dir = str(Path(policy_dir) / adapter)
        prompt_learning = PeftConfig.from_pretrained(adapter_dir).is_prompt_learning
        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=not prompt_learning)
        if prompt_learning:
            if method == "ppo":
                raise ValueError(f"{policy_dir}: PPO trains a merged model or LoRA adapters, not the prompt-tuning "
                                 f"adapter {adapter!r}; use align.method dpo, or merge it first")
            # PEFT refuses is_trainable for prompt-learning adapters it loads; unfreeze the soft prompt.
            for p in model.prompt_encoder.parameters():
                p.requires_grad_(True)
    elif lora:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        torch.manual_seed(seed)
        model = get_peft_model(model, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                     target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    return model


def save_policy(model, tokenizer, policy_dir: str | Path, output_dir: str | Path) -> str:
    """Save the trained policy to ``output_dir``; return how (``full``, ``merged_lora`` or ``adapter``)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    adapter = existing_adapter(policy_dir)
    if adapter:
        model.get_base_model().save_pretrained(output_dir, safe_serialization=True)
        model.save_pretrained(output_dir / adapter)
        shutil.copy(Path(policy_dir) / ADAPTER_FILE, output_dir / ADAPTER_FILE)
        how = "adapter"
    elif hasattr(model, "merge_and_unload"):
        model.merge_and_unload().save_pretrained(output_dir, safe_serialization=True)
        how = "merged_lora"
    else:
        model.save_pretrained(output_dir, safe_serialization=True)
        how = "full"
    tokenizer.save_pretrained(output_dir)
    return how
