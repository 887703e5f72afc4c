"""reward_model stage: a pairwise reward model, loss -log sigmoid(r_chosen - r_rejected), via TRL.

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # beside finetune

A one-logit sequence-classification head on the pretrained base. Reports held-out pairwise
accuracy after training (share of test pairs where the chosen text scores higher; the untrained
head is a random projection, so there is no "before" worth measuring), with its 95% bootstrap
interval, in the stage's metrics and in ``reward_model.json`` beside the model: the align stage
refuses a reward model whose interval does not clear its floor.
"""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.data.preferences import load_preferences
from shipyard.data.shards import Quarantined, write_quarantine
from shipyard.schema import MetricsLogger
from shipyard.train.hf_trainer import log_forwarder, quiet, trainer_args
from shipyard.train.reward_model_config import RewardModelConfig

REPORT_FILE = "reward_model.json"


def score_texts(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 16) -> list[float]:
    """Reward of each text: the classifier's single logit at the last non-pad token."""
    import torch

    scores: list[float] = []
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True,
                            truncation=True, max_length=max_length).to(device)
            scores.extend(model(**enc).logits[:, 0].float().tolist())
    return scores


def pairwise_hits(model, tokenizer, rows: list[dict], max_length: int) -> list[float]:
    """Per held-out pair: 1 where the chosen text scores higher than the rejected one, 0.5 on a tie, else 0."""
    chosen = score_texts(model, tokenizer, [r["prompt"] + r["chosen"] for r in rows], max_length)
    rejected = score_texts(model, tokenizer, [r["prompt"] + r["rejected"] for r in rows], max_length)
    return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]


def read_accuracy(model_dir: str | Path) -> dict:
    """What the reward_model stage measured on its held-out pairs (``REPORT_FILE`` in its output)."""
    path = Path(model_dir) / REPORT_FILE
    if not path.exists():
        raise ValueError(f"{model_dir}: no {REPORT_FILE}: this reward model's held-out accuracy is unknown "
                         f"(train it with the reward_model stage)")
    return json.loads(path.read_text())


def load_reward_model(path: str | Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=1, trust_remote_code=False, use_safetensors=True
    ).eval()


def run_reward_model(
    cfg: RewardModelConfig,
    base_model_dir: str | Path,
    output_dir: str | Path,
    log: MetricsLogger = lambda m, s: None,
) -> dict[str, float]:
    """Train a reward model from ``base_model_dir`` on ``cfg.train``; save it to ``output_dir``."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from shipyard.eval.stats import bootstrap_ci
    from shipyard.models.causal_lm import load_tokenizer

    output_dir = Path(output_dir)
    tokenizer = load_tokenizer(base_model_dir)
    rows, bad = load_preferences(cfg.train, cfg.max_examples, tokenizer)
    # TRL drops pairs longer than max_length; do it here instead so that each one is counted
    # and quarantined with its reason rather than lost silently.
    train = []
    for r in rows:
        longest = max(len(tokenizer(r["prompt"] + r[k], verbose=False)["input_ids"]) for k in ("chosen", "rejected"))
        if longest > cfg.max_length:
            bad.append(Quarantined(json.dumps(r, ensure_ascii=False), r["source"],
                                   f"{longest} tokens > max_length {cfg.max_length}"))
        else:
            train.append(r)
    train = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in train]
    if not train:
        raise ValueError(f"{cfg.train}: every pair is longer than max_length={cfg.max_length} tokens")
    test, bad_test = load_preferences(cfg.test, tokenizer=tokenizer)
    import torch

    torch.manual_seed(cfg.seed)  # the score head is new: without this each run starts from another one
    model = load_reward_model(base_model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(**trainer_args(cfg), max_length=cfg.max_length)
    trainer = quiet(RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                                  processing_class=tokenizer, callbacks=[log_forwarder(log)]))
    out = trainer.train()
    model = trainer.model
    hits = pairwise_hits(model, tokenizer, test, cfg.max_length)
    acc, (lo, hi) = sum(hits) / len(hits), bootstrap_ci(hits)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    write_quarantine(output_dir / "quarantine.jsonl", bad + bad_test)
    (output_dir / REPORT_FILE).write_text(json.dumps({"pairwise_accuracy": acc, "ci95": [lo, hi],
                                                      "test_pairs": len(test),
                                                      "rows": {"pairwise_accuracy": hits}}))
    return {"pairwise_accuracy": acc, "pairwise_accuracy_ci95_low": lo,
            "pairwise_accuracy_ci95_high": hi,
            "train_loss": out.training_loss, "train_pairs": len(train), "test_pairs": len(test),
            "quarantined": len(bad) + len(bad_test)}
