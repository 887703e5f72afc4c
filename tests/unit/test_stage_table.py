"""The stage table in ``shipyard.stages``' docstring is true: every row names real files, classes and functions,
the stage runs that function with that config, and every stage has a row."""

import ast
import importlib
import inspect
import re

import pytest

from conftest import REPO

LIB = REPO / "platform" / "shipyard"


def rows() -> list[dict[str, str]]:
    import shipyard.stages

    lines = [ln for ln in shipyard.stages.__doc__.splitlines() if ln.startswith("|") and "---" not in ln]
    head, *body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return [dict(zip(head, cells, strict=True)) for cells in body]


def _module(path: str) -> str:
    return "shipyard." + path.replace("/", ".")


def test_every_stage_has_a_row():
    from shipyard.stages import STAGES

    assert {r["stage"].split(" ")[0] for r in rows()} == set(STAGES)


@pytest.mark.parametrize("row", rows(), ids=lambda r: r["stage"])
def test_row_matches_the_code(row):
    from shipyard.config import PipelineConfig
    from shipyard.stages import SECTIONS, STAGES

    stage = row["stage"].split(" ")[0]
    cfg_name = row["config"]
    fn_path, fn_name = row["function"].split(":")
    cfg_path = fn_path + "_config"  # the convention: <module>_config.py beside <module>.py
    config_cls = getattr(importlib.import_module(_module(cfg_path)), cfg_name)
    function = getattr(importlib.import_module(_module(fn_path)), fn_name)
    # it takes that config (deploy takes the cluster: section, which holds its deploy: part)
    takes = {p.annotation for p in inspect.signature(function).parameters.values()}
    assert takes & {cfg_name, config_cls, "ClusterConfig" if stage == "deploy" else cfg_name}, \
        f"{fn_name} takes no {cfg_name}"
    # the profile holds that config where run_stage looks for it
    owner, *path = ["PipelineConfig", *SECTIONS.get(stage, stage).split(".")]
    model = PipelineConfig
    for part in path:
        annotation = model.model_fields[part].annotation
        model = next((a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")), None)
    if row["stage"].startswith("pretrain (base"):
        model = PipelineConfig.model_fields["base"].annotation
    assert model is config_cls, f"{owner}.{'.'.join(path)} is {model}, not {cfg_name}"
    # the stage function in STAGES calls it (an import of the function inside its body)
    body = ast.parse(inspect.getsource(STAGES[stage]))
    imported = {(n.module, a.name) for n in ast.walk(body) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert (_module(fn_path), fn_name) in imported, f"STAGES[{stage!r}] does not run {fn_path}:{fn_name}"
    # the component runs this stage through run_stage
    component = (REPO / "components" / row["component"] / "component.py").read_text()
    assert re.search(rf'run_stage\(\s*"{stage}"', component), f"components/{row['component']} does not run {stage}"
    for test in row["tests"].split(", "):
        [path] = (REPO / "tests").glob(f"*/{test}.py")
        assert fn_name in path.read_text() or path.parent.name == "e2e", f"{path} never calls {fn_name}"
