"""Constitutional critique-revise (RLAIF): the model improves its own answers against principles.

    shipyard critique-revise -c pipelines/configs/tiny-cpu.yaml --model INSTRUCT_DIR --output OUT

For every prompt the model answers; then, for each revision round, it critiques its answer against
one principle of the constitution (``critique`` request) and rewrites it (``revision`` request),
all in one chat so each step sees the previous ones (Bai et al. 2022). Outputs, in formats the
other stages read directly:

- ``sft.jsonl``: ``{messages}`` with the final revision as the answer (finetune ``train``/``tasks``);
- ``preferences.jsonl``: chat pairs, revised chosen over original rejected (reward_model ``train``,
  align ``train`` with dpo) — AI preference data;
- ``trace.jsonl``: every step (principle, answer, critique, revision) for inspection.

An unchanged or empty revision gives no pair; such examples are listed in ``quarantine.jsonl``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from shipyard.train.critique_revise_config import CritiqueReviseConfig

Generate = Callable[[list[str]], list[str]]


def run_critique_revise(cfg: CritiqueReviseConfig, model_dir: str | Path, output_dir: str | Path,
                        generate: Generate | None = None) -> dict[str, float]:
    """Answer, critique and revise every prompt with the model in ``model_dir``; write the datasets.

    ``generate`` (prompt texts -> completions) defaults to sampling from the model at ``temperature``.
    """
    from shipyard.data.preferences import load_prompt_messages, render_prompt
    from shipyard.data.shards import Quarantined, write_quarantine
    from shipyard.models.causal_lm import load_tokenizer

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(model_dir)
    if generate is None:
        import torch

        from shipyard.models.causal_lm import load_causal_lm
        from shipyard.models.inference import generate as sample

        torch.manual_seed(cfg.seed)
        model = load_causal_lm(model_dir)
        generate = lambda prompts: sample(model, tok, prompts, cfg.max_new_tokens,
                                          temperature=cfg.temperature)
    render = lambda msgs: render_prompt(msgs, tok)
    prompts, bad = load_prompt_messages(cfg.prompts, cfg.max_examples)
    rng = random.Random(cfg.seed)
    original = generate([render(p) for p in prompts])
    answers = list(original)
    traces = [{"prompt": p, "original": a, "steps": []} for p, a in zip(prompts, original, strict=True)]
    for _ in range(cfg.rounds):
        principles = [rng.choice(cfg.constitution) for _ in prompts]
        chats = [p + [{"role": "assistant", "content": a}, {"role": "user", "content": pr.critique}]
                 for p, a, pr in zip(prompts, answers, principles, strict=True)]
        critiques = generate([render(c) for c in chats])
        chats = [c + [{"role": "assistant", "content": k}, {"role": "user", "content": pr.revision}]
                 for c, k, pr in zip(chats, critiques, principles, strict=True)]
        answers = generate([render(c) for c in chats])
        for t, pr, k, a in zip(traces, principles, critiques, answers, strict=True):
            t["steps"].append({"principle": pr.name, "critique": k, "revision": a})
    sft, pairs = [], []
    for t, final in zip(traces, answers, strict=True):
        t["revised"] = final
        if not final.strip():
            bad.append(Quarantined(json.dumps(t, ensure_ascii=False), "critique_revise", "empty revision", "empty"))
            continue
        sft.append({"messages": t["prompt"] + [{"role": "assistant", "content": final}]})
        if final.strip() == t["original"].strip():
            bad.append(Quarantined(json.dumps(t, ensure_ascii=False), "critique_revise",
                                   "revision equals the original answer: no preference", "unchanged"))
            continue
        pairs.append({"prompt": t["prompt"], "chosen": [{"role": "assistant", "content": final}],
                      "rejected": [{"role": "assistant", "content": t["original"]}]})
    for name, rows in (("sft.jsonl", sft), ("preferences.jsonl", pairs), ("trace.jsonl", traces)):
        with open(output_dir / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_quarantine(output_dir / "quarantine.jsonl", bad)
    return {"prompts": len(prompts), "sft_rows": len(sft), "preference_pairs": len(pairs),
            "unchanged_or_empty": len(traces) - len(pairs), "rounds": cfg.rounds}
