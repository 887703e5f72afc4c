"""Prompts as versioned artifacts in MLflow's prompt registry: register, alias, load by ``name@alias``, render.

    name: word-problems
    system: Solve the problem. End with "Answer: <number>".
    template: "Question: {{question}}"
    examples:
      - {input: "Question: Ann has 3 apples and buys 2 more. How many has she?", output: "3 + 2 = 5. Answer: 5"}

A ``PromptSpec`` is stored as an MLflow chat prompt: the system turn, each example as a user turn and
an assistant turn, then the template as the last user turn. Tags ``shipyard.examples`` and
``shipyard.system`` let ``load`` read it back exactly. Loading a prompt inside an active MLflow run
links the version to the run (MLflow's ``mlflow.linkedPrompts`` tag); ``lineage_tags`` gives the URI
to record elsewhere. Refs are ``name``, ``name@alias`` or ``name/version``, with or without ``prompts:/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator

from shipyard.schema import StrictModel

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class Example(StrictModel):
    input: str = Field(min_length=1)
    output: str = Field(min_length=1)


class PromptSpec(StrictModel):
    name: str = Field(pattern=NAME)
    system: str = ""
    template: str = Field(min_length=1, description="The last user turn; {{variable}} placeholders.")
    examples: list[Example] = Field(default_factory=list, max_length=64)
    description: str = ""

    @field_validator("template")
    @classmethod
    def _has_a_variable(cls, v: str) -> str:
        if not VARIABLE.search(v):
            raise ValueError("template has no {{variable}}: the question would never reach the model")
        return v

    @property
    def variables(self) -> list[str]:
        return sorted(set(VARIABLE.findall(self.template)))

    def messages(self, k: int | None = None, examples: list[Example] | None = None,
                 **values: str) -> list[dict[str, str]]:
        """The chat turns for one request: system, the first ``k`` examples (all by default; or ``examples``,
        picked elsewhere), the filled template."""
        missing = [v for v in self.variables if v not in values]
        extra = sorted(set(values) - set(self.variables))
        problems = [f"{what} {', '.join(names)}" for what, names in (("missing", missing), ("unknown", extra)) if names]
        if problems:
            raise ValueError(f"prompt {self.name}: {'; '.join(problems)}")
        spec = self if examples is None else self.model_copy(update={"examples": examples})
        return _chat(spec, None if examples is not None else k, VARIABLE.sub(lambda m: str(values[m.group(1)]),
                                                                              self.template))


@dataclass(frozen=True)
class LoadedPrompt:
    spec: PromptSpec
    version: int
    uri: str  # prompts:/NAME/VERSION, what lineage records
    aliases: tuple[str, ...] = ()


def read_spec(path: str | Path) -> PromptSpec:
    from shipyard.schema import parse_config, read_config_file

    return parse_config(PromptSpec, read_config_file(path), str(path))


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _chat(spec: PromptSpec, k: int | None = None, user: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": spec.system}] if spec.system else []
    for ex in spec.examples[:k]:
        turns += [{"role": "user", "content": ex.input}, {"role": "assistant", "content": ex.output}]
    return turns + [{"role": "user", "content": spec.template if user is None else user}]


def register(tracking_uri: str, spec: PromptSpec, alias: str | None = None, message: str = "") -> LoadedPrompt:
    """A new version of ``spec.name`` (the registry numbers it); ``alias`` is moved to it."""
    c = _client(tracking_uri)
    tags = {"shipyard.examples": str(len(spec.examples)), "shipyard.system": "1" if spec.system else "0"}
    if spec.description:
        tags["shipyard.description"] = spec.description
    pv = c.register_prompt(name=spec.name, template=_chat(spec), commit_message=message or None, tags=tags)
    if alias:
        c.set_prompt_alias(spec.name, alias=alias, version=int(pv.version))
    return LoadedPrompt(spec, int(pv.version), f"prompts:/{spec.name}/{pv.version}", (alias,) if alias else ())


def _uri(ref: str) -> str:
    ref = ref.removeprefix("prompts:/")
    name = re.split(r"[@/]", ref, maxsplit=1)[0]
    if not re.match(NAME, name) or not re.fullmatch(r"[^@/]+(@[A-Za-z0-9_-]+|/\d+)?", ref):
        raise ValueError(f"not a prompt ref: {ref!r} (use NAME, NAME@ALIAS or NAME/VERSION)")
    return f"prompts:/{ref}" if ("@" in ref or "/" in ref) else f"prompts:/{ref}@latest"


def _spec(pv) -> PromptSpec:
    turns, tags = pv.template, pv.tags or {}
    try:
        n, has_system = int(tags["shipyard.examples"]), tags["shipyard.system"] == "1"
    except (KeyError, ValueError):
        raise ValueError(f"prompts:/{pv.name}/{pv.version} was not registered by Shipyard (no shipyard.* tags)"
                         ) from None
    if not isinstance(turns, list) or len(turns) != has_system + 2 * n + 1:
        raise ValueError(f"prompts:/{pv.name}/{pv.version}: its turns do not match its shipyard.* tags")
    body = turns[1:] if has_system else turns
    examples = [Example(input=body[2 * i]["content"], output=body[2 * i + 1]["content"]) for i in range(n)]
    return PromptSpec(name=pv.name, system=turns[0]["content"] if has_system else "", template=body[-1]["content"],
                      examples=examples, description=tags.get("shipyard.description", ""))


def load(tracking_uri: str, ref: str) -> LoadedPrompt:
    """The prompt ``ref`` names; inside an active MLflow run the version is linked to that run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = _uri(ref)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        pv = mlflow.genai.load_prompt(uri)
    except MlflowException as e:
        raise LookupError(f"{uri}: {e.message}") from None
    return LoadedPrompt(_spec(pv), int(pv.version), f"prompts:/{pv.name}/{pv.version}", tuple(pv.aliases or ()))


def lineage_tags(prompt: LoadedPrompt, role: str = "prompt") -> dict[str, str]:
    return {f"shipyard.{role}": prompt.uri}


def is_file_ref(ref: str | None) -> bool:
    """A prompt named by a PromptSpec file (else it is a registry ref: NAME, NAME@ALIAS, NAME/VERSION)."""
    return bool(ref) and ref.endswith((".yaml", ".yml", ".json"))


def resolve(ref: str, tracking_uri: str | None = None, variables: int | None = 1) -> tuple[PromptSpec, str]:
    """(spec, where it came from: the file, or ``prompts:/NAME/VERSION``) of a PromptSpec file or a registered
    prompt (``NAME``, ``NAME@ALIAS``, ``NAME/VERSION``); ``variables``: how many it must have (None: any)."""
    if is_file_ref(ref) or Path(ref).is_file():
        spec, where = read_spec(ref), str(ref)
    else:
        from shipyard.paths import default_tracking_uri

        loaded = load(tracking_uri or default_tracking_uri(), ref)
        spec, where = loaded.spec, loaded.uri
    if variables is not None and len(spec.variables) != variables:
        raise ValueError(f"prompt {ref}: needs {variables} variable(s) (the question); it has {spec.variables}")
    return spec, where
