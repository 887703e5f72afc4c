"""Prompts in MLflow's prompt registry: versions, aliases, exact round trips, run links, rendering, the CLI."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from conftest import REPO
from shipyard.apps.prompts import PromptSpec, lineage_tags, load, read_spec, register
from shipyard.cli import app

SHIPPED = REPO / "pipelines" / "prompts" / "word-problems.yaml"


@pytest.fixture()
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_versions_and_aliases_round_trip_exactly(uri):
    spec = read_spec(SHIPPED)
    first = register(uri, spec, alias="production", message="three shots")
    zero_shot = spec.model_copy(update={"examples": [], "system": ""})
    second = register(uri, zero_shot, alias="staging")
    assert (first.version, first.uri, second.version) == (1, "prompts:/word-problems/1", 2)
    assert load(uri, "word-problems@production").spec == spec
    assert load(uri, "prompts:/word-problems/2").spec == zero_shot and load(uri, "word-problems").version == 2
    register(uri, zero_shot, alias="production")  # moving the alias is how a prompt is promoted
    moved = load(uri, "word-problems@production")
    assert (moved.version, moved.spec) == (3, zero_shot) and "production" in moved.aliases
    assert load(uri, "word-problems/1").spec == spec  # old versions stay


def test_loading_inside_a_run_links_the_version_to_the_run(uri):
    import mlflow

    register(uri, read_spec(SHIPPED), alias="production")
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        prompt = load(uri, "word-problems@production")
        mlflow.set_tags(lineage_tags(prompt))
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert json.loads(tags["mlflow.linkedPrompts"]) == [{"name": "word-problems", "version": "1"}]
    assert tags["shipyard.prompt"] == "prompts:/word-problems/1"


def test_rendering_fills_variables_and_takes_k_examples():
    spec = read_spec(SHIPPED)
    turns = spec.messages(question="Tom has 4 pens and loses 1. How many are left?")
    assert [t["role"] for t in turns] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert turns[-1]["content"] == "Question: Tom has 4 pens and loses 1. How many are left?"
    assert [t["role"] for t in spec.messages(1, question="x")] == ["system", "user", "assistant", "user"]
    assert len(spec.messages(0, question="x")) == 2
    assert PromptSpec(name="p", template="{{ a }} and {{b}} {{a}}").messages(a="{{b}}", b="2")[-1]["content"] == \
        "{{b}} and 2 {{b}}"  # values are inserted once, never re-expanded
    with pytest.raises(ValueError, match="missing question; unknown q"):
        spec.messages(q="x")


def test_bad_specs_and_refs_get_clear_errors(uri):
    for bad in ({"name": "p", "template": "no variable here"}, {"name": "bad name", "template": "{{q}}"},
                {"name": "p", "template": "{{q}}", "shots": 3}, {"name": "p", "template": ""},
                {"name": "p", "template": "{{q}}", "examples": [{"input": "", "output": "x"}]}):
        with pytest.raises(ValidationError):
            PromptSpec(**bad)
    for ref in ("", "a b", "p@", "p/x", "p@a@b", "prompts:/"):
        with pytest.raises(ValueError, match="not a prompt ref"):
            load(uri, ref)
    with pytest.raises(LookupError, match="not found"):
        load(uri, "nobody@production")


def test_a_prompt_registered_outside_shipyard_is_refused_not_misread(uri):
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri, registry_uri=uri).register_prompt(name="foreign", template="Hi {{name}}")
    with pytest.raises(ValueError, match="not registered by Shipyard"):
        load(uri, "foreign")


TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1, max_size=40)


@pytest.fixture(scope="module")
def shared_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('prompts') / 'mlflow.db'}"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(system=st.text(max_size=40) | st.just(""), prefix=TEXT,
       examples=st.lists(st.tuples(TEXT, TEXT), max_size=3))
def test_any_spec_comes_back_as_it_went_in(shared_uri, system, prefix, examples):
    uri = shared_uri  # each example is the next version of the same prompt
    spec = PromptSpec(name="any", system=system, template=prefix + " {{question}}",
                      examples=[{"input": i, "output": o} for i, o in examples])
    assert load(uri, register(uri, spec).uri).spec == spec


def test_the_cli_registers_shows_and_renders(uri, tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["prompts", "register", str(SHIPPED), "--alias", "production", "--tracking-uri", uri])
    assert out.exit_code == 0 and "prompts:/word-problems/1 (@production)" in out.stdout, out.output
    shown = runner.invoke(app, ["prompts", "show", "word-problems@production", "--tracking-uri", uri])
    assert shown.exit_code == 0 and shown.stdout.startswith("# prompts:/word-problems/1 @production")
    copy = tmp_path / "copy.yaml"
    copy.write_text(shown.stdout)
    assert read_spec(copy) == read_spec(SHIPPED)  # show prints a spec register accepts
    rendered = runner.invoke(app, ["prompts", "render", "word-problems@production", "--var", "question=2+2?",
                                   "--shots", "1", "--tracking-uri", uri])
    assert rendered.exit_code == 0 and json.loads(rendered.stdout)[-1]["content"] == "Question: 2+2?"
    bad = runner.invoke(app, ["prompts", "render", "word-problems", "--var", "q", "--tracking-uri", uri])
    assert bad.exit_code == 2 and "VARIABLE=VALUE" in bad.output
    missing = runner.invoke(app, ["prompts", "show", "nobody@production", "--tracking-uri", uri])
    assert missing.exit_code == 2 and "not found" in missing.output
