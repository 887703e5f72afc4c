"""The OpenAI request bodies the runtime accepts (``/openai/v1/completions`` and ``/chat/completions``).

Unknown fields are refused (400), so a client never silently loses a setting. Every bound here is
one the engine honours: any value inside them gets an answer (``tests/integration/test_serving_abuse.py``
tries their extremes). Extensions beyond OpenAI's fields are vLLM's (``top_k``, ``repetition_penalty``,
``return_tokens_as_token_ids``) or Shipyard's (``rag``; on chat, ``app`` and ``conversation``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from shipyard.apps.memory import CONVERSATION_ID
from shipyard.serving.params import SamplingParams
from shipyard.serving.rag import RagOptions
from shipyard.serving.tools import NamedToolChoice, ToolCallIn, ToolDef

MAX_TEXT = 100_000  # characters of one message or prompt
MAX_PROMPTS = 64  # prompts in one completions request
MAX_TOP_LOGPROBS = 20


def utf8(text: str) -> str:
    """JSON can carry lone surrogates (``"\\ud800"``) that no tokenizer can encode: refuse them here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode (a lone surrogate at {exc.start})") from None
    return text


Text = Annotated[str, AfterValidator(utf8)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(None, max_length=MAX_TEXT)
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: enforced by constrained decoding (``serving.constrain``), not by asking."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _compiles(self):
        from shipyard.serving.constrain import grammar_for

        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("response_format: json_schema is given exactly when type is json_schema")
        self._grammar = grammar_for(self.type, self.json_schema.schema_ if self.json_schema else None)
        return self

    def grammar(self) -> str | None:
        return self._grammar


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=256)
    max_tokens: int | None = Field(None, ge=0, le=1_000_000)
    max_completion_tokens: int | None = Field(None, gt=0, le=1_000_000)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, le=1_000_000, description="Extension (vLLM's): sample from the k most likely "
                                                          "tokens; 0 = all.")
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="Extension (vLLM's): CTRL's penalty; 1 = off.")
    return_tokens_as_token_ids: bool = Field(False, description="Extension (vLLM's): log-prob entries name their "
                                                                "tokens token_id:N.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    rag: RagOptions | None = Field(None, description="Extension: retrieval for this request (see serving.rag).")
    response_format: ResponseFormat | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s or len(s) > 200 for s in stops):
            raise ValueError("stop: up to 4 non-empty strings of at most 200 characters")
        for s in stops:
            utf8(s)
        return v

    def top_logprobs_asked(self) -> int | None:  # None: no logprobs
        return None

    def params(self, max_tokens: int, index: int, adapter: str | None = None, echo: bool = False) -> SamplingParams:
        stops = tuple([self.stop] if isinstance(self.stop, str) else (self.stop or []))
        return SamplingParams(max_tokens, self.temperature, self.top_p, self.top_k, stops,
                              None if self.seed is None else self.seed + index, self.frequency_penalty,
                              self.presence_penalty, self.repetition_penalty, adapter, self.top_logprobs_asked(),
                              echo, self.grammar())

    def grammar(self) -> str | None:
        """What the output must follow: a forced tool call's grammar, else the response_format's."""
        return self.response_format.grammar() if self.response_format else None


class TextPart(BaseModel):
    """A content part of a message; text is the only kind a text model reads."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: Annotated[Text, Field(max_length=MAX_TEXT)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[Text, Field(max_length=MAX_TEXT)] | Annotated[list[TextPart], Field(max_length=256)] \
        | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=64)
    tool_call_id: str | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _shape(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content: required (only an assistant message with tool_calls may omit it)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls: only on assistant messages")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("tool_call_id: required on, and only on, tool messages")
        return self

    def as_template_input(self) -> dict:
        """What the chat template reads: parts joined into one text; ``developer`` is OpenAI's newer ``system``;
        earlier tool calls with their arguments as objects (what templates iterate over)."""
        import json

        content = self.content or ""
        text = content if isinstance(content, str) else "".join(p.text for p in content)
        if len(text) > MAX_TEXT:
            raise ValueError(f"content: at most {MAX_TEXT} characters")
        out = {"role": "system" if self.role == "developer" else self.role, "content": text}
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.function.name, "arguments": json.loads(c.function.arguments)}} for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return {**out, "name": self.name} if self.name else out


class AppOptions(BaseModel):
    """The ``app`` extension field: settings of the app a ``NAME:APP`` model runs (``serving.openai_apps``)."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(None, ge=0, le=64, description="fewshot: examples shown (default: all the prompt's).")
    select: Literal["first", "similar"] = Field("first", description="fewshot: the first k examples, or the k most "
                                                "similar to the question (--app-examples, else the prompt's).")
    max_steps: int = Field(5, ge=1, le=20, description="react: thought/action rounds before giving up.")
    retries: int = Field(1, ge=0, le=3, description="pal: corrected programs asked for after a failed one.")

    @model_validator(mode="after")
    def _similar_needs_k(self):
        if self.select == "similar" and self.k is None:
            raise ValueError("select similar needs k (how many examples to show)")
        return self


class ChatRequest(_Request):
    max_tokens: int | None = Field(None, gt=0, le=1_000_000)
    app: AppOptions | None = Field(None, description="Extension: options of the app a NAME:APP model runs.")
    conversation: str | None = Field(None, pattern=CONVERSATION_ID,
                                     description="Extension: a conversation id; its earlier turns (this tenant's) "
                                                 "come before the messages and this turn is remembered.")
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[ToolDef] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _checks(self):
        from shipyard.serving.tools import forced_grammar

        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: set logprobs to true to use it")
        for m in self.messages:
            m.as_template_input()
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice: give tools to choose from")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be distinct")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice: no tool named {self.tool_choice.function.name!r}")
        self._forced = (forced_grammar(self.tools, self.tool_choice, self.parallel_tool_calls)
                        if self.tools and (self.tool_choice == "required" or isinstance(self.tool_choice,
                                                                                      NamedToolChoice)) else None)
        return self

    def tools_on(self) -> bool:
        """Tools are shown to the model and its calls parsed (tool_choice is not none)."""
        return bool(self.tools) and self.tool_choice != "none"

    def grammar(self) -> str | None:
        return self._forced or super().grammar()

    def top_logprobs_asked(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_Request):
    prompt: Prompt
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        prompts = [v] if isinstance(v, str) or (isinstance(v, list) and v and isinstance(v[0], int)) else v
        if not prompts or len(prompts) > MAX_PROMPTS:
            raise ValueError(f"prompt: 1 to {MAX_PROMPTS} prompts")
        for p in prompts:
            if len(p) > MAX_TEXT:
                raise ValueError(f"prompt: at most {MAX_TEXT} characters or tokens each")
            if isinstance(p, str):
                utf8(p)
            if isinstance(p, list) and any(t < 0 for t in p):
                raise ValueError("prompt: token ids are not negative")
        return v

    @model_validator(mode="after")
    def _checks(self):
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 only scores the prompt, with echo true")
        return self

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        return [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)

    def top_logprobs_asked(self) -> int | None:
        return self.logprobs
