"""Where a model runs for inference: serving, evaluation, optimize's measurements, reward scoring.

``device: auto`` is a CUDA GPU when one is visible, else the CPU; a quantized directory decides
for itself: bitsandbytes formats run on CUDA only, and Shipyard's dynamic int8 (fbgemm kernels)
and torchao weight-only files on the CPU only. Asking for a device the model or the machine cannot
run on fails before anything loads, naming both. Training stages pick their device elsewhere
(``shipyard.train.distributed``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

from shipyard.schema import Device, Dtype

DEVICES, DTYPES = get_args(Device), get_args(Dtype)
CUDA_ONLY = {"bnb_int8", "bnb_nf4"}
CPU_ONLY = {"dynamic_int8", "int8_weight_only", "int4_weight_only"}


def quant_method(model_dir: str | Path | None) -> str | None:
    """The quantization method a model directory was saved with (None: a float model; "unknown": a
    quantization file that names none, which the loader then refuses)."""
    from shipyard.models.causal_lm import QUANT_FILE

    if model_dir is None or not (Path(model_dir) / QUANT_FILE).exists():
        return None
    return json.loads((Path(model_dir) / QUANT_FILE).read_text()).get("method") or "unknown"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): then bf16 autocast is ~2x fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def train_precision(requested: str) -> str:
    """``fp32`` or ``bf16`` for a training stage's ``precision`` (auto: bf16 where it is native)."""
    import torch

    if requested != "auto":
        if requested == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ValueError("precision bf16: this GPU has no bf16; use fp32 or auto")
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def bf16_autocast(enabled: bool, device: str):
    """bf16 autocast on ``device`` (``cpu``/``cuda``) when ``enabled``, else a no-op context."""
    import contextlib

    import torch

    return torch.autocast(device_type=device, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def kernels_home(method: str | None) -> str | None:
    """The only device a quantization method's kernels run on (None: a float model runs anywhere)."""
    return "cuda" if method in CUDA_ONLY else "cpu" if method in CPU_ONLY else None


def inference_device(requested: str = "auto", model_dir: str | Path | None = None) -> str:
    """``cpu`` or ``cuda`` for ``requested`` (one of DEVICES) and the model in ``model_dir``."""
    if requested not in DEVICES:
        raise ValueError(f"device {requested!r}: expected one of {', '.join(DEVICES)}")
    method, cuda = quant_method(model_dir), cuda_available()
    if requested == "cuda" and not cuda:
        raise ValueError("device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                         "use device auto or cpu")
    home = kernels_home(method)
    if home == "cuda":
        if requested == "cpu" or not cuda:
            raise ValueError(f"{model_dir}: a {method} (bitsandbytes) model runs on a CUDA GPU only"
                             + ("" if cuda else ", and none is visible here"))
        return "cuda"
    if home == "cpu":
        if requested == "cuda":
            raise ValueError(f"{model_dir}: a {method} model runs on the CPU only (its kernels are CPU kernels); "
                             f"quantize with bnb_int8 or bnb_nf4 for a GPU, or use device auto or cpu")
        return "cpu"
    if requested == "auto":
        return "cuda" if cuda else "cpu"
    return requested


def inference_dtype(requested: str, device: str):
    """The torch dtype for a float model's weights: ``auto`` is bfloat16 on a GPU that has it, else float32."""
    import torch

    if requested not in DTYPES:
        raise ValueError(f"dtype {requested!r}: expected one of {', '.join(DTYPES)}")
    if requested == "auto":
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if requested != "float32" and device == "cpu":
        raise ValueError(f"dtype {requested}: half precision is for a GPU; on the CPU use float32 or auto")
    return getattr(torch, requested)


def place(model, device: str, dtype=None):
    """``model`` on ``device`` and, when ``dtype`` is given (float models only), in that dtype.

    A model already there stays put: a bitsandbytes model is placed on its GPU when it loads, and
    transformers refuses ``.to`` on 8-bit models.
    """
    first = next(model.parameters())
    if first.device.type != device:
        model = model.to(device)
    if dtype is not None and first.dtype != dtype:
        model = model.to(dtype)
    return model


def resolve(model_dir: str | Path, device: str = "auto", dtype: str = "float32"):
    """(``cpu``/``cuda``, torch dtype for a float model or None for a quantized one, quantization method)."""
    where, method = inference_device(device, model_dir), quant_method(model_dir)
    return where, None if method else inference_dtype(dtype, where), method


def load_for_inference(model_dir: str | Path, device: str = "auto", dtype: str = "float32"):
    """``load_causal_lm`` placed for inference: (model, device). Quantized models keep their dtypes."""
    from shipyard.models.causal_lm import load_causal_lm

    where, float_dtype, _ = resolve(model_dir, device, dtype)
    return place(load_causal_lm(model_dir), where, float_dtype), where
