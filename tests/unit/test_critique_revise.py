"""Constitutional critique-revise: the chain of prompts, and real outputs that the other stages read."""

import json

import yaml

from conftest import DEMO
from shipyard.train.critique_revise import run_critique_revise
from shipyard.train.critique_revise_config import CritiqueReviseConfig

CONSTITUTION = [
    {"name": "kind", "critique": "Point out anything unkind in your answer.", "revision": "Rewrite it kindly."},
    {"name": "honest", "critique": "Point out any claim you cannot support.", "revision": "Rewrite it honestly."},
]


def _prompts(tmp_path, n=4):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Review film number {i}."}) + "\n" for i in range(n))
                    + "{broken\n")
    return path


def test_each_step_sees_the_answer_the_principle_and_the_critique(tiny_base, tmp_path):
    seen = []

    def scripted(prompts):  # answer k of a call = a label that names the call, so the chain can be followed
        seen.append(prompts)
        return [f"step{len(seen)}-{i}" for i in range(len(prompts))]

    cfg = CritiqueReviseConfig(prompts=str(_prompts(tmp_path, 2)), constitution=CONSTITUTION, rounds=2)
    out = run_critique_revise(cfg, tiny_base, tmp_path / "out", generate=scripted)
    assert len(seen) == 1 + 2 * 2  # answer, then (critique, revision) per round
    critique_prompt, revision_prompt = seen[1][0], seen[2][0]
    assert "Review film number 0." in critique_prompt and "step1-0" in critique_prompt
    assert any(p["critique"] in critique_prompt for p in CONSTITUTION)
    assert "step2-0" in revision_prompt and any(p["revision"] in revision_prompt for p in CONSTITUTION)
    assert "step3-0" in seen[3][0]  # round 2 critiques the round-1 revision
    trace = [json.loads(line) for line in (tmp_path / "out/trace.jsonl").read_text().splitlines()]
    assert trace[0]["original"] == "step1-0" and trace[0]["revised"] == "step5-0"
    assert [s["principle"] in {"kind", "honest"} for s in trace[0]["steps"]] == [True, True]
    pair = json.loads((tmp_path / "out/preferences.jsonl").read_text().splitlines()[0])
    assert pair["chosen"][0]["content"] == "step5-0" and pair["rejected"][0]["content"] == "step1-0"
    assert out == {"prompts": 2, "sft_rows": 2, "preference_pairs": 2, "unchanged_or_empty": 0, "rounds": 2}
    # the broken prompt row is quarantined with its line
    assert "prompts.jsonl:3" in (tmp_path / "out/quarantine.jsonl").read_text()


def test_a_real_model_writes_data_that_finetune_and_reward_model_load(tiny_base, tmp_path):
    from typer.testing import CliRunner

    from shipyard.cli import app
    from shipyard.data.preferences import load_preferences
    from shipyard.data.sft_data import load_conversations

    profile = yaml.safe_load((DEMO.parents[1] / "pipelines/configs/tiny-cpu.yaml").read_text())
    profile["critique_revise"] = {"prompts": str(_prompts(tmp_path)), "constitution": CONSTITUTION,
                                  "max_new_tokens": 12}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(profile))
    result = CliRunner().invoke(app, ["critique-revise", "-c", str(tmp_path / "p.yaml"), "--model", str(tiny_base),
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "4 prompts, 1 round(s): 4 SFT rows" in result.output
    convs, bad = load_conversations(tmp_path / "out/sft.jsonl")
    assert len(convs) == 4 and bad == []
    pairs, bad = load_preferences(tmp_path / "out/preferences.jsonl")
    assert len(pairs) >= 1 and bad == []
    assert pairs[0]["chosen"] != pairs[0]["rejected"]


def test_the_kfp_component_compiles_and_runs_the_stage(tmp_path):
    import yaml as _yaml
    from kfp import compiler

    from shipyard.components.critique_revise.component import critique_revise
    from shipyard.stages import STAGES

    compiler.Compiler().compile(critique_revise, str(tmp_path / "c.yaml"))
    spec = _yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert set(spec["root"]["inputDefinitions"]["artifacts"]) == {"model"}
    assert set(spec["root"]["outputDefinitions"]["artifacts"]) == {"data", "metrics"}
    assert "critique_revise" in STAGES
