from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import REPO
from shipyard.config import PipelineConfig, load_pipeline_config
from shipyard.schema import ConfigError, parse_config
from shipyard.train.finetune_config import FinetuneConfig

PROFILES = sorted((REPO / "pipelines" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_profile_loads_and_its_data_exists(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_pipeline_config(path)
    assert cfg.name == path.stem
    assert all(Path(p).is_absolute() and Path(p).exists() for p in cfg.data_paths().values())
    assert path.read_text().startswith(f"# shipyard run pipelines/lifecycle.py -c pipelines/configs/{path.name}")


def _profile_with(monkeypatch, old: str, new: str, tmp_path) -> Path:
    monkeypatch.chdir(REPO)
    text = (REPO / "pipelines/configs/tiny-cpu.yaml").read_text()
    assert old in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(old, new, 1))
    return bad


def test_unknown_key_names_file_line_and_key(monkeypatch, tmp_path):
    bad = _profile_with(monkeypatch, "  lr: 0.003\n", "  lr: 0.003\n  learning_rate: 0.1\n", tmp_path)
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(bad)
    line = bad.read_text().splitlines().index("  learning_rate: 0.1") + 1
    assert f"bad.yaml:{line}: pretrain.learning_rate: unknown key" in str(err.value)


def test_wrong_type_and_impossible_values_are_named(monkeypatch, tmp_path):
    bad = _profile_with(monkeypatch, "  max_steps: 600\n", "  max_steps: many\n", tmp_path)
    with pytest.raises(ConfigError, match=r"pretrain\.max_steps: .*integer.*'many'"):
        load_pipeline_config(bad)
    bad = _profile_with(monkeypatch, "lora: {r: 16,", "lora: {r: 0,", tmp_path)
    with pytest.raises(ConfigError, match=r"finetune\.lora\.r: .*greater than 0"):
        load_pipeline_config(bad)
    bad = _profile_with(monkeypatch, "  lr: 0.003\n", "  lr: -1\n", tmp_path)
    with pytest.raises(ConfigError, match=r"pretrain\.lr"):
        load_pipeline_config(bad)


def test_cross_stage_limits(monkeypatch, tmp_path):
    bad = _profile_with(monkeypatch, "  max_length: 256\n", "  max_length: 4096\n", tmp_path)
    with pytest.raises(ConfigError, match=r"finetune.max_length \(4096\) exceeds pretrain.context_length \(256\)"):
        load_pipeline_config(bad)
    bad = _profile_with(monkeypatch, "pretrain:\n", "pretrain:\n  objective: mlm\n  architecture: bert\n", tmp_path)
    with pytest.raises(ConfigError, match=r"pretrain.objective 'mlm': the lifecycle fine-tunes.*shipyard pretrain"):
        load_pipeline_config(bad)
    no_rag = _profile_with(monkeypatch, "rag:\n  index: python_faq\n  documents: data/demo/rag/python-faq.jsonl\n",
                           "", tmp_path)
    with pytest.raises(ConfigError, match=r"evaluate.suites.6 \(kind rag\) searches the index the rag: section builds"):
        load_pipeline_config(no_rag)


def test_missing_data_path_is_named(monkeypatch, tmp_path):
    bad = _profile_with(monkeypatch, "input: data/demo/raw", "input: data/nowhere", tmp_path)
    with pytest.raises(ConfigError, match=r"data_filter.input: path does not exist: data/nowhere"):
        load_pipeline_config(bad)


def test_configs_are_frozen_and_hashable_by_content():
    cfg = parse_config(FinetuneConfig, "train: x.jsonl\n")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.lr = 1.0
    a = parse_config(PipelineConfig, (REPO / "pipelines/configs/ci-tiny.yaml").read_text())
    b = parse_config(PipelineConfig, (REPO / "pipelines/configs/ci-tiny.yaml").read_text())
    assert a.digest() == b.digest()


def test_not_a_mapping_and_bad_yaml():
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config(PipelineConfig, "- a\n- b\n", "x.yaml")
    with pytest.raises(ConfigError, match="x.yaml: not valid YAML"):
        parse_config(PipelineConfig, "a: [\n", "x.yaml")


def test_unknown_filter_step_fails_with_the_valid_names(monkeypatch, tmp_path):
    bad = _profile_with(monkeypatch, "  length: {min_chars: 40, min_words: 5}\n",
                        "  steps: [normalize, bloom_dedup]\n  length: {min_chars: 40, min_words: 5}\n", tmp_path)
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(bad)
    msg = str(err.value)
    assert "data_filter.steps" in msg and "unknown step(s) ['bloom_dedup']" in msg
    assert "valid steps: normalize, pii, length, language, gopher_quality" in msg


def test_unknown_key_inside_a_filter_step_is_named(monkeypatch, tmp_path):
    bad = _profile_with(monkeypatch, "    min_stop_words: 1\n", "    min_stop_words: 1\n    max_stop_words: 9\n",
                        tmp_path)
    with pytest.raises(ConfigError, match=r"data_filter\.gopher_quality\.max_stop_words: unknown key"):
        load_pipeline_config(bad)


def test_align_sections_reject_unknown_keys_and_bad_shapes(monkeypatch, tmp_path):
    bad = _profile_with(monkeypatch, "  ppo: {epochs: 4,", "  ppo: {epoch: 4,", tmp_path)
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: align.ppo.epoch: unknown key"):
        load_pipeline_config(bad)
    bad = _profile_with(monkeypatch, "  method: ppo\n", "  method: reinforce\n", tmp_path)
    with pytest.raises(ConfigError, match=r"align.method: Input should be 'ppo', 'dpo' or 'grpo'"):
        load_pipeline_config(bad)
    bad = _profile_with(monkeypatch, "  rewards: [{kind: reward_model}]", "  rewards: [{kind: keywords}]", tmp_path)
    with pytest.raises(ConfigError, match=r"align.rewards.0: .*keywords: set exactly when kind is keywords"):
        load_pipeline_config(bad)


def test_critique_revise_section_is_validated_and_its_prompts_resolved(monkeypatch, tmp_path):
    text = (REPO / "pipelines/configs/tiny-cpu.yaml").read_text() + (
        "\ncritique_revise:\n  prompts: data/demo/preferences/test.jsonl\n"
        "  constitution:\n    - {name: kind, critique: Point out anything unkind., revision: Rewrite it kindly.}\n")
    monkeypatch.chdir(REPO)
    (tmp_path / "p.yaml").write_text(text)
    cfg = load_pipeline_config(tmp_path / "p.yaml")
    assert Path(cfg.critique_revise.prompts).is_absolute() and cfg.critique_revise.constitution[0].name == "kind"
    principle = ("  constitution:\n    - {name: kind, critique: Point out anything unkind., "
                 "revision: Rewrite it kindly.}\n")
    (tmp_path / "q.yaml").write_text(text.replace(principle, "  constitution: []\n"))
    with pytest.raises(ConfigError, match=r"q.yaml:\d+: critique_revise.constitution: List should have at least 1"):
        load_pipeline_config(tmp_path / "q.yaml")
