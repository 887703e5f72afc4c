"""OpenAI tool calling: ``tools`` rendered into the prompt, the model's calls parsed out of its answer.

Calls are written the way the model's chat template asks for them when it knows tools (Hermes/Qwen's
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, the format most open tool-tuned models and
their templates use); a template without tool support gets the same format taught by a system preamble
that lists the tools' JSON Schemas. ``tool_choice``:
  - ``none``: the tools are not shown, the answer is text;
  - ``auto`` (default with tools): the model decides; whatever ``<tool_call>`` blocks its answer holds
    that parse and name a given tool become ``tool_calls`` (``finish_reason: tool_calls``);
  - ``required`` or ``{"type": "function", "function": {"name": ...}}``: constrained decoding
    (``serving.constrain``) forces one call (or several, with ``parallel_tool_calls``) whose name is a given
    tool's and whose arguments validate against its parameters schema.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME = r"^[A-Za-z0-9_-]{1,64}$"
CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
PREAMBLE = ("You can call tools. To call one, answer with only\n<tool_call>\n{\"name\": TOOL_NAME, \"arguments\": "
            "{...}}\n</tool_call>\n(one block per call). The tools, with their arguments as JSON Schema:\n")


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    description: str | None = Field(None, max_length=10_000)
    parameters: dict | None = None
    strict: bool | None = None


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDef


class _Named(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: _Named


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    arguments: str = Field(max_length=100_000)


class ToolCallIn(BaseModel):
    """A call an earlier assistant turn made (sent back in ``messages``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=256)
    type: Literal["function"]
    function: CalledFunction

    @model_validator(mode="after")
    def _json_arguments(self):
        try:
            json.loads(self.function.arguments)
        except ValueError:
            raise ValueError("tool_calls: function.arguments must be a JSON string") from None
        return self


def call_schema(tool: ToolDef) -> dict:
    params = tool.function.parameters or {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": tool.function.name}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False}


def forced_grammar(tools: list[ToolDef], choice, parallel: bool) -> str:
    """The llguidance grammar of ``required`` / a named tool: one call, or several when ``parallel``."""
    from llguidance import LLMatcher

    from shipyard.serving.constrain import JSON_STYLE

    chosen = [t for t in tools if not isinstance(choice, NamedToolChoice) or t.function.name == choice.function.name]
    schema = call_schema(chosen[0]) if len(chosen) == 1 else {"anyOf": [call_schema(t) for t in chosen]}
    schema["x-guidance"] = JSON_STYLE  # the compiler reads its options at the schema's top
    block = '"<tool_call>\\n" call "\\n</tool_call>"'
    lark = f"start: {block}" + (f' ("\\n" {block})*' if parallel and not isinstance(choice, NamedToolChoice)
                                else "") + f"\ncall: %json {json.dumps(schema)}"
    grammar = LLMatcher.grammar_from_lark(lark)
    if error := LLMatcher.validate_grammar(grammar):
        raise ValueError(f"tools: a parameters schema cannot be enforced: {error}")
    return grammar


def template_knows_tools(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in template and "<tool_call>" in template


def with_tools(messages: list[dict], tools: list[ToolDef], native: bool) -> list[dict]:
    """``messages`` ready for a template: as they are for a template that renders tools itself; otherwise the
    preamble joins the system message, earlier calls become ``<tool_call>`` text and results user turns."""
    if native:
        return messages
    listing = json.dumps([{"name": t.function.name, "description": t.function.description or "",
                           "parameters": t.function.parameters or {"type": "object"}} for t in tools])
    out, system = [], PREAMBLE + listing
    for m in messages:
        if m["role"] == "system" and system:
            out.append({**m, "content": m["content"] + "\n\n" + system})
            system = ""
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"Tool result ({m.get('tool_call_id', '')}): {m['content']}"})
        elif m.get("tool_calls"):
            blocks = "\n".join(f"<tool_call>\n{json.dumps(c['function'])}\n</tool_call>" for c in m["tool_calls"])
            out.append({"role": "assistant", "content": ((m.get("content") or "") + "\n" + blocks).strip()})
        else:
            out.append(m)
    return ([{"role": "system", "content": system}] if system else []) + out


def parse_calls(text: str, tools: list[ToolDef]) -> tuple[str | None, list[dict]]:
    """(the text outside the calls or None, OpenAI ``tool_calls``): blocks that parse and name a given tool."""
    names, calls = {t.function.name for t in tools}, []
    for block in CALL.findall(text):
        try:
            call = json.loads(block)
        except ValueError:
            continue
        args = call.get("arguments", call.get("parameters", {})) if isinstance(call, dict) else None
        if isinstance(call, dict) and call.get("name") in names and isinstance(args, dict):
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                          "function": {"name": call["name"], "arguments": json.dumps(args)}})
    if not calls:
        return text, []
    rest = CALL.sub("", text).strip()
    return rest or None, calls
