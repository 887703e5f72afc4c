"""Post-training quantization of a causal LM's Linear layers (the optimize stage's last step).

Methods (``QuantizeConfig.method``):

- dynamic_int8: weights per output channel (symmetric int8); activations quantized on the fly at
  inference, so no calibration data. Stored as ``<name>.weight_int8`` (int8) +
  ``<name>.weight_scale`` (fp32); loading restores the exact int8 values into dynamically
  quantized modules (fbgemm/x86 kernels). torch 2.13 marks ``torch.ao.quantization`` deprecated
  in favour of torchao, but its eager dynamic int8 path still ships.
- int8_weight_only / int4_weight_only: torchao (``shipyard.optimize.weight_only``).
- bf16: the whole model in bfloat16 (``save_pretrained``), loaded and computed in bfloat16.
- bnb_int8 / bnb_nf4: bitsandbytes through transformers, CUDA only; a clear error elsewhere.

Every output is safetensors-only with ``shipyard_quant.json`` naming the method and the layers;
``shipyard.models.causal_lm.load_causal_lm`` loads all of them.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from shipyard.models.causal_lm import QUANT_FILE, SIDE_FILES, dir_size
from shipyard.optimize.optimize_config import QuantizeConfig


def _quantize_modules(model, names: list[str]):
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        return quantize_dynamic(model, {n: per_channel_dynamic_qconfig for n in names}, dtype=torch.qint8)


def linear_names(model, skip: list[str]) -> list[str]:
    import torch

    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not any(n.endswith(s) for s in skip)]


def run_quantize(cfg: QuantizeConfig, model_dir: str | Path, output_dir: str | Path) -> dict[str, float]:
    """Quantize the model in ``model_dir`` and save it to ``output_dir``.

    Returns:
        Sizes on disk before and after (bytes), their ratio, and the number of layers quantized.
    """
    from transformers import AutoModelForCausalLM

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if cfg.method.startswith("bnb_"):
        return _bnb(cfg, model_dir, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.method == "bf16":
        return _bf16(model_dir, output_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True).eval()
    names = linear_names(model, cfg.skip_modules)
    if not names:
        raise ValueError(f"no Linear layers left to quantize after skip_modules={cfg.skip_modules}")
    if cfg.method == "dynamic_int8":
        _save_dynamic_int8(model, names, output_dir)
        spec = {"method": cfg.method, "dtype": "qint8", "granularity": "per_channel", "modules": names}
    else:
        from shipyard.optimize.weight_only import groupable, quantize_weight_only, save_weight_only

        names, kept = groupable(model, names, cfg.method, cfg.group_size)
        if not names:
            raise ValueError(f"quantize.group_size {cfg.group_size} divides no layer's in_features: pick a divisor")
        quantize_weight_only(model, names, cfg.method, cfg.group_size)
        extras = save_weight_only(model, output_dir, cfg.method)
        spec = {"method": cfg.method, "library": "torchao",
                "group_size": cfg.group_size if cfg.method == "int4_weight_only" else None,
                "modules": names, "float_modules": kept, **extras}
    _copy_side_files(model_dir, output_dir)
    (output_dir / QUANT_FILE).write_text(json.dumps(spec, indent=2))
    before, after = dir_size(model_dir), dir_size(output_dir)
    return {"size_bytes_before": before, "size_bytes_after": after, "size_ratio": after / before,
            "quantized_layers": len(names)}


def _bf16(model_dir: Path, output_dir: Path) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True, dtype=torch.bfloat16)
    model.save_pretrained(output_dir, safe_serialization=True)
    _copy_side_files(model_dir, output_dir, overwrite=False)
    (output_dir / QUANT_FILE).write_text(json.dumps({"method": "bf16", "dtype": "bfloat16"}, indent=2))
    before, after = dir_size(model_dir), dir_size(output_dir)
    return {"size_bytes_before": before, "size_bytes_after": after, "size_ratio": after / before,
            "quantized_layers": sum(isinstance(m, torch.nn.Linear) for m in model.modules())}


def _copy_side_files(model_dir: Path, output_dir: Path, overwrite: bool = True) -> None:
    """Config, tokenizer and adapter from the source; ``overwrite=False`` keeps what save_pretrained wrote
    (a bitsandbytes config.json carries the quantization_config that loading depends on)."""
    from shipyard.models.causal_lm import copy_adapter

    for name in SIDE_FILES:
        if (model_dir / name).exists() and (overwrite or not (output_dir / name).exists()):
            shutil.copy2(model_dir / name, output_dir / name)
    copy_adapter(model_dir, output_dir)  # a prompt-tuning adapter stays float, on top of the quantized base


def _save_dynamic_int8(model, names: list[str], output_dir: Path) -> None:
    import torch
    from safetensors.torch import save_file

    qmodel = _quantize_modules(model, names)
    state: dict[str, torch.Tensor] = {}
    quantized = set(names)
    for key, tensor in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if owner in quantized or "_packed_params" in key:
            continue
        state[key] = tensor.contiguous()
    for name in names:
        packed = qmodel.get_submodule(name).weight()
        state[f"{name}.weight_int8"] = packed.int_repr().contiguous()
        state[f"{name}.weight_scale"] = packed.q_per_channel_scales().to(torch.float32).contiguous()
        bias = qmodel.get_submodule(name).bias()
        if bias is not None:
            state[f"{name}.bias"] = bias.detach().contiguous()
    # Tied embeddings share storage; safetensors refuses shared tensors, so store one copy.
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(output_dir / "model.safetensors"), metadata={"format": "pt"})


def bnb_needs_cuda(method: str) -> ValueError:
    return ValueError(f"quantize.method {method}: bitsandbytes kernels need a CUDA GPU and this machine "
                      f"has none; on CPU use int8_weight_only, int4_weight_only or dynamic_int8")


def _bnb(cfg: QuantizeConfig, model_dir: Path, output_dir: Path) -> dict[str, float]:
    """bitsandbytes 8-bit (LLM.int8) or 4-bit NF4 with double quantization, saved by transformers."""
    import torch

    if not torch.cuda.is_available():
        raise bnb_needs_cuda(cfg.method)
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if cfg.method == "bnb_int8":
        q = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=cfg.skip_modules)
    else:
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=cfg.skip_modules)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=q, device_map={"": 0},
                                                 use_safetensors=True, trust_remote_code=False)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_dir), safe_serialization=True)
    _copy_side_files(model_dir, output_dir, overwrite=False)
    (output_dir / QUANT_FILE).write_text(json.dumps({"method": cfg.method, "library": "bitsandbytes"}, indent=2))
    before, after = dir_size(model_dir), dir_size(output_dir)
    return {"size_bytes_before": before, "size_bytes_after": after, "size_ratio": after / before,
            "quantized_layers": float(sum(1 for _ in linear_names(model, cfg.skip_modules)))}


