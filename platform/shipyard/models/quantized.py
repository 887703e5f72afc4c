"""Load a model directory the optimize stage quantized (it holds ``shipyard_quant.json``).

Loading lives with the other loaders (``shipyard.models``), below the optimize stage that writes
these directories, so serving and evaluation load a quantized champion without importing optimize.
Methods: bf16 (bfloat16 weights, computed in bfloat16), dynamic_int8 (exact int8 weights into torch's
dynamic quantized Linear), int8/int4 weight-only (torchao's tensor subclasses, int4 packed two per byte
on disk) and bitsandbytes (CUDA only).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

QUANT_FILE = "shipyard_quant.json"  # what the optimize stage writes beside a quantized model's weights


def _int8_linear(q, scale, bias):
    """A dynamically quantized Linear holding exactly the stored int8 weights."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        qweight = torch._make_per_channel_quantized_tensor(
            q, scale.to(torch.float64), torch.zeros(len(scale), dtype=torch.long), 0)
        layer = DynamicQuantizedLinear(q.shape[1], q.shape[0], bias_=bias is not None, dtype=torch.qint8)
        layer.set_weight_bias(qweight, bias)
    return layer


def load_quantized(path: str | Path):
    """Rebuild a model saved by ``run_quantize`` with its exact int8 weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    spec = json.loads((path / QUANT_FILE).read_text())
    method = spec.get("method")
    if method in ("int8_weight_only", "int4_weight_only"):
        return load_weight_only(path, spec)
    if method in ("bnb_int8", "bnb_nf4"):
        return _load_bnb(path, method)
    if method == "bf16":
        import torch

        return AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False, use_safetensors=True,
                                                    dtype=torch.bfloat16).eval()
    if method != "dynamic_int8":
        raise ValueError(f"{path / QUANT_FILE}: unsupported quantization method {method!r}")
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config)
    state = load_file(str(path / "model.safetensors"))
    layers = {name: _int8_linear(state.pop(f"{name}.weight_int8"), state.pop(f"{name}.weight_scale"),
                                 state.pop(f"{name}.bias", None)) for name in spec["modules"]}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in layers
               and not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config: missing={missing} unexpected={unexpected}")
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def _load_bnb(path: Path, method: str):
    import torch
    from transformers import AutoModelForCausalLM

    if not torch.cuda.is_available():
        raise ValueError(f"{path}: a {method} (bitsandbytes) model loads on a CUDA GPU only")
    return AutoModelForCausalLM.from_pretrained(str(path), device_map={"": 0}, use_safetensors=True,
                                                trust_remote_code=False).eval()


def _unpack_int4(packed, shape):
    import math

    import torch

    low, high = packed & 0x0F, packed >> 4
    flat = torch.stack([low, high], dim=1).reshape(-1)[: math.prod(shape)]
    return (flat.to(torch.int16) - 8).to(torch.int8).reshape(shape)


def load_weight_only(path: Path, spec: dict):
    """Rebuild a model saved by ``save_weight_only`` with its exact quantized weights."""
    from safetensors import safe_open
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, shape in spec.get("packed_int4", {}).items():
        tensors[key] = _unpack_int4(tensors[key], shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state, leftover = unflatten_tensor_state_dict(tensors, metadata)
    if leftover:
        raise ValueError(f"{path}: tensors not in the saved layout: {sorted(leftover)[:5]}")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()
