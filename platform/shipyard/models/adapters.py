"""PEFT adapters: saved one per task, merged into the base on demand, swapped at load time.

    shipyard adapters merge <base_dir> <adapter_dir> <out_dir>

An adapter directory is what ``PeftModel.save_pretrained`` writes (adapter_config.json +
adapter_model.safetensors). Merging folds LoRA's B·A into the base weights (a plain model, no
runtime cost); prompt-tuning adapters cannot be merged and are attached at load time instead.
"""

from __future__ import annotations

from pathlib import Path


def _base(base_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(base_dir), use_safetensors=True, trust_remote_code=False,
                                                dtype=torch.float32)


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path):
    """Write base + LoRA adapter merged into ``out_dir`` (safetensors); return the merged model."""
    import json

    from peft import PeftModel

    kind = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("peft_type")
    if kind != "LORA":
        raise ValueError(f"{adapter_dir}: a {kind} adapter cannot be merged into the weights; "
                         f"load it with load_with_adapters instead")
    merged = PeftModel.from_pretrained(_base(base_dir), str(adapter_dir)).merge_and_unload()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    return merged


def load_with_adapters(base_dir: str | Path, adapters: dict[str, str | Path], active: str | None = None):
    """The base with every named adapter attached (one copy of the base); ``set_adapter(name)`` swaps."""
    from peft import PeftModel

    names = list(adapters)
    if not names:
        raise ValueError("no adapters given")
    model = PeftModel.from_pretrained(_base(base_dir), str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    model.set_adapter(active or names[0])
    return model.eval()


def adapters_in(model_dir: str | Path) -> dict[str, Path]:
    """The adapters a finetune output holds, by name."""
    root = Path(model_dir) / "adapters"
    return {p.name: p for p in sorted(root.iterdir()) if (p / "adapter_config.json").exists()} if root.is_dir() else {}
