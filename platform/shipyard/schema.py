"""The lowest layer of every config: StrictModel, the shared field types, and loading with errors that
name the file, the line and the key.

Each stage's typed config lives beside the stage (``<stage>_config.py``); ``shipyard.config`` assembles
them into the pipeline profile. Loading is here, below them all, so any layer can load a section of a
YAML file (``load_section``) without importing the profile.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Where a model runs: auto is the CUDA GPU when one is visible (shipyard.models.device decides the rest).
Device = Literal["auto", "cpu", "cuda"]
# A float model's weights at inference: auto is bfloat16 on a GPU that has it, else float32.
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# Compute precision of the transformers/TRL training stages (fp32 master weights either way): auto is bf16
# autocast where the device computes bf16 natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else fp32.
Precision = Literal["auto", "fp32", "bf16"]
TrainPrecision = Annotated[Precision, Field(description="fp32 or bf16 autocast (fp32 weights either way); auto: "
                                            "bf16 where the device computes it natively (2.2x faster steps on "
                                            "an AVX512-BF16 CPU), else fp32.")]
# How a stage reports metrics while it runs: log(metrics, step), e.g. into its MLflow run.
MetricsLogger = Callable[[dict[str, float], int], None]


class StrictModel(BaseModel):
    """Base of every config: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names file, line and key."""


def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path of a YAML document to its 1-based line number."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            lines.update(_key_lines(item, prefix + (i,)))
    return lines


def _format_errors(exc: ValidationError, source: str, lines: dict[tuple, int]) -> str:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "union_tag_invalid":  # point at the discriminator's own line (kind: ...)
            loc = loc + (err["ctx"]["discriminator"].strip("'"),)
        # The nearest enclosing key that exists in the file gives the line.
        line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
        key = ".".join(str(p) for p in loc) or "<root>"
        where = f"{source}:{line}" if line else source
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        out.append(f"{where}: {key}: {msg}")
    return "invalid config:\n  " + "\n  ".join(out)


def parse_config(model: type[BaseModel], text: str, source: str = "<string>") -> Any:
    """Parse YAML (or JSON) text into ``model``; raise ConfigError naming source, line and key."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, _key_lines(node) if node else {})) from None


def config_to_json(cfg: BaseModel) -> str:
    return json.dumps(cfg.model_dump(by_alias=True), sort_keys=True)


def read_config_file(path: str | Path) -> str:
    """The text of a config file; a missing one is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return path.read_text(encoding="utf-8")


def load_section(path: str | Path, key: str, model: type[BaseModel]) -> Any:
    """The ``key:`` section of a YAML file (a whole profile will do; other sections are ignored).

    Errors name the file, the line and the dotted key, as for a whole profile (``mine.yaml:7: pretrain.lr: ...``).
    """
    from pydantic import create_model

    section = create_model(f"{key}_section", __config__=ConfigDict(extra="ignore", frozen=True), **{key: (model, ...)})
    return getattr(parse_config(section, read_config_file(path), str(path)), key)
