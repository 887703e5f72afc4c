"""Fine-tuning methods, formats, mixtures, adapters and the forgetting check on a tiny base model."""

import json

import pytest
import torch
from pydantic import ValidationError

from conftest import DEMO, write_jsonl
from shipyard.train.finetune_config import FinetuneConfig, LoraConfig

TRAIN = str(DEMO / "instructions/train.jsonl")
HELDOUT = str(DEMO / "heldout/python-docs.jsonl")
FAST = dict(max_steps=10, lr=0.02, max_length=128, batch_size=8, lora=LoraConfig(r=4, alpha=8, dropout=0.0))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _chat_file(tmp_path, n=80):
    rows = [json.loads(line) for line in open(TRAIN)][:n]
    chat = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"{r['instruction']}\n\n{r['input'][:60]}"},
                          {"role": "assistant", "content": r["response"]}]} for r in rows]
    bad = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "no answer"}]},
           {"messages": "hi"}, {"prompt": "x"}]
    return write_jsonl(tmp_path / "chat.jsonl", chat + bad)


def test_full_finetune_changes_every_layer(tiny_base, tmp_path):
    from shipyard.train.finetune import run_finetune

    out = run_finetune(FinetuneConfig(train=TRAIN, method="full", max_examples=100, **{**FAST, "lr": 0.003}),
                       tiny_base, tmp_path)
    assert out["eval_loss"] < out["eval_loss_before"] and out["trainable_fraction"] == 1.0
    before, after = _weights(tiny_base), _weights(tmp_path)
    layer0 = [k for k in after if "layers.0." in k]
    assert len(layer0) >= 7 and set(after) == set(before), sorted(after)  # attention, MLP and norms of layer 0
    assert [k for k in layer0 if torch.equal(before[k], after[k])] == []
    assert not (tmp_path / "adapters").exists()


def test_prompt_tuning_trains_only_the_soft_prompt_and_loads_back(tiny_base, tmp_path):
    from shipyard.models.causal_lm import load_causal_lm
    from shipyard.train.finetune import run_finetune

    cfg = FinetuneConfig(train=TRAIN, method="prompt_tuning", prompt_tuning={"num_virtual_tokens": 20},
                         max_examples=100, **{**FAST, "lr": 1.0, "max_steps": 15})
    out = run_finetune(cfg, tiny_base, tmp_path)
    hidden = json.loads((tiny_base / "config.json").read_text())["hidden_size"]
    assert out["trainable_params"] == 20 * hidden and out["eval_loss"] < out["eval_loss_before"]
    before, after = _weights(tiny_base), _weights(tmp_path)
    assert all(torch.equal(before[k], after[k]) for k in after)  # the model itself is frozen
    model = load_causal_lm(tmp_path)  # base + soft prompt, attached at load time
    assert type(model).__name__.startswith("Peft") and model.active_adapter == "default"


def test_qlora_without_cuda_fails_before_loading(tiny_base, tmp_path):
    from shipyard.train.finetune import run_finetune

    with pytest.raises(ValueError, match="qlora .* needs a CUDA GPU; this machine has none: use method lora"):
        run_finetune(FinetuneConfig(train=TRAIN, method="qlora"), tiny_base, tmp_path)


def test_chat_rows_train_with_the_chat_template_and_bad_rows_are_quarantined(tiny_base, tmp_path):
    from shipyard.train.finetune import run_finetune

    out = run_finetune(FinetuneConfig(train=str(_chat_file(tmp_path)), **FAST), tiny_base, tmp_path / "m")
    assert out["quarantined"] == 3 and out["eval_loss"] < out["eval_loss_before"]
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "m" / "quarantine.jsonl").read_text().splitlines()]
    assert any("last message must be the assistant's" in r for r in reasons)
    assert any("messages must be a list" in r for r in reasons)
    assert any("neither messages nor instruction/response" in r for r in reasons)


def test_mixture_weights_and_per_task_adapters_swap_at_load_time(tiny_base, tmp_path):
    from shipyard.data.sft_data import mix
    from shipyard.models.adapters import adapters_in, load_with_adapters, merge_adapter
    from shipyard.train.finetune import run_finetune

    mixed = mix({"a": [{"i": i} for i in range(100)], "b": [{"i": i} for i in range(10)]},
                {"a": 1.0, "b": 3.0}, total=200, seed=0)
    assert sum(r["task"] == "b" for r in mixed) == 150  # 3:1, the small task up-sampled

    chat = str(_chat_file(tmp_path))
    tasks = [{"name": "synopsis", "train": TRAIN, "weight": 2.0, "max_examples": 120},
             {"name": "brief", "train": chat, "weight": 1.0}]
    out = run_finetune(FinetuneConfig(tasks=tasks, max_examples=90, **FAST), tiny_base, tmp_path / "mix")
    assert {"eval_loss.synopsis", "eval_loss.brief"} <= out.keys()
    assert set(adapters_in(tmp_path / "mix")) == {"mixture"}

    out = run_finetune(FinetuneConfig(tasks=tasks, adapters="per_task", **FAST), tiny_base, tmp_path / "per")
    found = adapters_in(tmp_path / "per")
    assert set(found) == {"synopsis", "brief"} and "synopsis.eval_loss" in out and "brief.eval_loss" in out
    model = load_with_adapters(tiny_base, found)
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        model.set_adapter("synopsis")
        a = model(input_ids=x).logits
        model.set_adapter("brief")
        b = model(input_ids=x).logits
    assert not torch.allclose(a, b)  # one base in memory, two behaviours
    merged = merge_adapter(tiny_base, found["brief"], tmp_path / "merged-brief")
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=x).logits, b, atol=1e-5)  # merging = the swapped-in adapter


def test_forgetting_check_logs_and_gates(tiny_base, tmp_path):
    from shipyard.train.finetune import ForgettingError, run_finetune

    cfg = FinetuneConfig(train=TRAIN, method="full", max_examples=100,
                         forgetting={"heldout_text": HELDOUT, "max_docs": 8}, **{**FAST, "lr": 0.05})
    out = run_finetune(cfg, tiny_base, tmp_path / "a")
    assert out["forgetting_ppl_ratio"] == pytest.approx(out["forgetting_ppl_after"] / out["forgetting_ppl_before"])
    assert out["forgetting_ppl_ratio"] > 1.0  # full tuning at a high lr hurts the base task
    strict = cfg.model_copy(update={"forgetting": cfg.forgetting.model_copy(update={"max_ratio": 1.0001})})
    with pytest.raises(ForgettingError, match=r"base-task perplexity .* exceeds finetune.forgetting.max_ratio"):
        run_finetune(strict, tiny_base, tmp_path / "b")


@pytest.mark.parametrize("bad,match", [
    (dict(), "set either train"),
    (dict(train=TRAIN, tasks=[{"name": "a", "train": TRAIN}]), "not both"),
    (dict(tasks=[{"name": "a", "train": TRAIN}, {"name": "a", "train": TRAIN}]), "unique"),
    (dict(train=TRAIN, method="full", adapters="per_task"), "needs a PEFT method"),
    (dict(train=TRAIN, lora={"r": 0}), "greater than 0"),
    (dict(train=TRAIN, prompt_tuning={"num_virtual_tokens": 0}), "greater than or equal to 1"),
    (dict(train=TRAIN, method="ia3"), "Input should be"),
])
def test_impossible_finetune_configs(bad, match):
    with pytest.raises(ValidationError, match=match):
        FinetuneConfig(**bad)


def test_rows_too_long_are_quarantined_and_an_empty_task_fails_with_counts(tiny_base, tmp_path):
    from shipyard.train.finetune import run_finetune

    long = {"instruction": "word " * 400, "response": "ok"}
    rows = [{**r, "input": r["input"][:60]} for r in map(json.loads, open(TRAIN))][:40]
    path = write_jsonl(tmp_path / "t.jsonl", rows + [long, "{oops"])
    out = run_finetune(FinetuneConfig(train=str(path), **{**FAST, "max_steps": 2}), tiny_base, tmp_path / "m")
    assert out["quarantined"] == 2
    q = (tmp_path / "m" / "quarantine.jsonl").read_text()
    assert "t.jsonl:41" in q and "leaves no room for the response" in q and "t.jsonl:42" in q
    path = write_jsonl(tmp_path / "empty.jsonl", [long, long, "{oops"])
    with pytest.raises(ValueError, match=r"has 0 usable rows of 3 \(1 malformed, 2 longer than max_length 128\)"):
        run_finetune(FinetuneConfig(train=str(path), **FAST), tiny_base, tmp_path / "e")


def test_adapters_cli_lists_and_merges(tiny_base, tmp_path):
    from typer.testing import CliRunner

    from shipyard.cli import app
    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer
    from shipyard.train.finetune import run_finetune

    run_finetune(FinetuneConfig(train=TRAIN, merge=False, **{**FAST, "max_steps": 3}), tiny_base, tmp_path / "ft")
    res = CliRunner().invoke(app, ["adapters", "list", str(tmp_path / "ft")])
    assert res.exit_code == 0 and res.output.startswith("default\t")
    res = CliRunner().invoke(app, ["adapters", "merge", str(tiny_base), str(tmp_path / "ft/adapters/default"),
                                   str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    x = torch.tensor([[5, 6, 7]])
    with torch.no_grad():  # unmerged output (base + adapter at load time) == merged model
        assert torch.allclose(load_causal_lm(tmp_path / "ft")(input_ids=x).logits,
                              load_causal_lm(tmp_path / "merged")(input_ids=x).logits, atol=1e-5)
    assert load_tokenizer(tmp_path / "merged").eos_token == load_tokenizer(tiny_base).eos_token
    res = CliRunner().invoke(app, ["adapters", "merge", str(tiny_base), str(tmp_path / "nowhere"), str(tmp_path / "m")])
    assert res.exit_code == 2


def test_prompt_tuned_model_goes_through_align_quantize_and_generates(tiny_base, tmp_path):
    """The lifecycle with method prompt_tuning: the soft prompt rides along, unmerged, to serving."""
    from shipyard.models.causal_lm import load_causal_lm, load_tokenizer
    from shipyard.models.inference import generate
    from shipyard.optimize.optimize_config import QuantizeConfig
    from shipyard.optimize.quantize import run_quantize
    from shipyard.train.align import run_align
    from shipyard.train.align_config import AlignConfig
    from shipyard.train.finetune import run_finetune

    cfg = FinetuneConfig(train=TRAIN, method="prompt_tuning", max_examples=60, **{**FAST, "lr": 1.0, "max_steps": 4})
    run_finetune(cfg, tiny_base, tmp_path / "ft")
    out = run_align(AlignConfig(train=str(DEMO / "preferences/train.jsonl"), max_examples=48, max_steps=3,
                                lr=0.05, max_length=110, batch_size=8, eval_examples=4, rewards=[{"kind": "non_toxic"}],
                                eval_prompts=str(DEMO / "preferences/test.jsonl"), generation={"max_new_tokens": 8}),
                    tmp_path / "ft", tmp_path / "al")
    assert out["train_pairs"] > 0
    from safetensors.torch import load_file

    ft = load_file(str(tmp_path / "ft/adapters/default/adapter_model.safetensors"))
    al = load_file(str(tmp_path / "al/adapters/default/adapter_model.safetensors"))
    assert ft.keys() == al.keys() and any(not torch.equal(ft[k], al[k]) for k in ft)  # DPO moved the soft prompt
    run_quantize(QuantizeConfig(), tmp_path / "al", tmp_path / "q")
    model, tok = load_causal_lm(tmp_path / "q"), load_tokenizer(tmp_path / "q")
    assert type(model).__name__.startswith("Peft")
    assert len(generate(model, tok, ["### Instruction:\nHi\n\n### Response:\n"], max_new_tokens=4)) == 1
