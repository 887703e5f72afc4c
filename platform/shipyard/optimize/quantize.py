"""quantize stage: post-training dynamic int8 quantization of a causal LM's Linear layers.

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # after align

Weights are quantized per output channel (symmetric int8); activations are quantized on the fly
at inference, so no calibration data is needed. The output stays safetensors-only: each quantized
layer is stored as ``<name>.weight_int8`` (int8) + ``<name>.weight_scale`` (fp32), and
``shipyard_quant.json`` lists those layers. Loading rebuilds the fp32 graph, restores the exact int8
values and converts the layers back to dynamically quantized modules (fbgemm/x86 kernels on CPU).

Note: torch 2.13 marks ``torch.ao.quantization`` deprecated in favour of torchao; its eager
dynamic int8 path still ships and is the fastest CPU int8 kernel available here without torchao.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from shipyard.config import QuantizeConfig
from shipyard.models.causal_lm import QUANT_FILE, dir_size

_COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "chat_template.jinja")


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
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True).eval()
    names = linear_names(model, cfg.skip_modules)
    if not names:
        raise ValueError(f"no Linear layers left to quantize after skip_modules={cfg.skip_modules}")
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
    for name in _COPY:
        if (model_dir / name).exists():
            shutil.copy2(model_dir / name, output_dir / name)
    from shipyard.models.causal_lm import copy_adapter

    copy_adapter(model_dir, output_dir)  # a prompt-tuning adapter stays float, on top of the int8 base
    (output_dir / QUANT_FILE).write_text(json.dumps(
        {"method": cfg.method, "dtype": "qint8", "granularity": "per_channel", "modules": names}, indent=2))
    before, after = dir_size(model_dir), dir_size(output_dir)
    return {"size_bytes_before": before, "size_bytes_after": after, "size_ratio": after / before,
            "quantized_layers": len(names)}


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
    if spec.get("method") != "dynamic_int8":
        raise ValueError(f"{path / QUANT_FILE}: unsupported quantization method {spec.get('method')!r}")
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
