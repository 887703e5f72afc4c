"""Build, save and load causal LMs. Loading is safe by default: safetensors only, no remote code.

A directory written by the quantize stage (it holds ``shipyard_quant.json``) loads back as a
dynamically quantized int8 model; any other directory loads as a plain transformers model.
"""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.models.quantized import QUANT_FILE, load_quantized

ADAPTER_FILE = "shipyard_adapter.json"  # written by finetune for unmerged adapters
# Everything of a model directory but its weights: what a step that rewrites the weights carries over.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja")


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def load_causal_lm(path: str | Path):
    """Load a causal LM directory for inference (eval mode, CPU unless moved)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / QUANT_FILE).exists():
        model = load_quantized(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), trust_remote_code=False, use_safetensors=True, dtype=torch.float32
        )
    if (path / ADAPTER_FILE).exists():  # an adapter that is not merged (prompt tuning): attach it
        spec = json.loads((path / ADAPTER_FILE).read_text())
        model = _attach_adapter(model, path / spec["adapter"], quantized=(path / QUANT_FILE).exists())
    return model.eval()


def _attach_adapter(model, adapter_dir: Path, quantized: bool):
    from peft import PeftConfig, PeftModel, get_peft_model

    config = PeftConfig.from_pretrained(str(adapter_dir))
    if not (quantized and config.is_prompt_learning):
        return PeftModel.from_pretrained(model, str(adapter_dir))
    # PEFT's loader pushes a state dict through the whole model, which int8 Linear modules reject;
    # a soft prompt is one embedding table, so set it directly.
    import torch
    from safetensors.torch import load_file

    peft_model = get_peft_model(model, config)
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(weights["prompt_embeddings"])
    return peft_model


def copy_adapter(src: str | Path, dst: str | Path) -> bool:
    """Carry an unmerged adapter (and its pointer file) from one model directory to the next."""
    import shutil

    src, dst = Path(src), Path(dst)
    if not (src / ADAPTER_FILE).exists():
        return False
    spec = json.loads((src / ADAPTER_FILE).read_text())
    shutil.copytree(src / spec["adapter"], dst / spec["adapter"], dirs_exist_ok=True)
    shutil.copy(src / ADAPTER_FILE, dst / ADAPTER_FILE)
    return True


def is_quantized(path: str | Path) -> bool:
    return (Path(path) / QUANT_FILE).exists()


def dir_size(path: str | Path, pattern: str = "*.safetensors") -> int:
    return sum(p.stat().st_size for p in Path(path).glob(pattern))


def write_card(path: str | Path, **info) -> None:
    """A small JSON model card: what produced the model and from what."""
    (Path(path) / "shipyard_model.json").write_text(json.dumps(info, indent=2, default=str))
