"""Build, save and load causal LMs. Loading is safe by default: safetensors only, no remote code.

A directory written by the quantize stage (it holds ``shipyard_quant.json``) loads back as a
dynamically quantized int8 model; any other directory loads as a plain transformers model.
"""

from __future__ import annotations

import json
from pathlib import Path

QUANT_FILE = "shipyard_quant.json"


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def load_causal_lm(path: str | Path):
    """Load a causal LM directory for inference (eval mode, CPU unless moved)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / QUANT_FILE).exists():
        from shipyard.optimize.quantize import load_quantized

        model = load_quantized(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), trust_remote_code=False, use_safetensors=True, dtype=torch.float32
        )
    return model.eval()


def is_quantized(path: str | Path) -> bool:
    return (Path(path) / QUANT_FILE).exists()


def dir_size(path: str | Path, pattern: str = "*.safetensors") -> int:
    return sum(p.stat().st_size for p in Path(path).glob(pattern))


def write_card(path: str | Path, **info) -> None:
    """A small JSON model card: what produced the model and from what."""
    (Path(path) / "shipyard_model.json").write_text(json.dumps(info, indent=2, default=str))
