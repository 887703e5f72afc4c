"""How each OpenAI route renders its prompt and shapes its stream chunks and response body.

What differs between chat and text completions lives here; the request flow is ``openai_api``'s.
Bodies are built with the ``openai`` package's own pydantic models, so the official client parses them.
Log-probs follow OpenAI's two layouts: chat's ``logprobs.content`` (one entry per token with its
``top_logprobs``) and completions' legacy ``tokens``/``token_logprobs``/``top_logprobs``/``text_offset``
(with ``echo``, the prompt's tokens first, the first one's logprob null).
"""

from __future__ import annotations

import time
import uuid

from shipyard.serving.params import Generation, TokenLogprob


class TokenText:
    """Token ids as the text OpenAI's log-prob fields name them by, or as ``token_id:N`` (vLLM's
    ``return_tokens_as_token_ids``: exact where a token is not valid UTF-8 on its own)."""

    def __init__(self, tokenizer, as_ids: bool = False):
        self.tokenizer, self.as_ids = tokenizer, as_ids

    def __call__(self, token: int) -> str:
        if self.as_ids:
            return f"token_id:{token}"
        return self.tokenizer.decode([token], skip_special_tokens=False)


class _Shape:
    def __init__(self, req, prefix: str, question: str):
        self.req, self.question = req, question
        self.rid, self.created = f"{prefix}-{uuid.uuid4().hex}", int(time.time())


class ChatShape(_Shape):
    """The last user message is the question (RAG rewrites it); the chat template renders the rest around it."""

    def __init__(self, req, llm):
        from shipyard.serving.tools import template_knows_tools, with_tools

        messages = [m.as_template_input() for m in req.messages]
        self.tools, self.native_tools = (req.tools if req.tools_on() else None), template_knows_tools(llm.tokenizer)
        if self.tools:
            messages = with_tools(messages, self.tools, self.native_tools)
        at = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
        self.messages, self.at, self.llm = messages, at, llm
        self.on_answer = None  # called with the first choice's text once it is final (conversation memory)
        self.text_of = TokenText(llm.tokenizer, req.return_tokens_as_token_ids)
        super().__init__(req, "chatcmpl", messages[at]["content"])

    @property
    def holds_text(self) -> bool:
        """With tools the answer may be a call: a stream sends it whole at the end, parsed (not as raw text)."""
        return bool(self.tools)

    def render(self, text: str) -> str:
        m, at = self.messages, self.at
        specs = [t.model_dump(exclude_none=True) for t in self.tools] if self.tools and self.native_tools else None
        return self.llm.chat_prompt([*m[:at], {**m[at], "content": text}, *m[at + 1:]], specs)

    def message(self, g: Generation) -> tuple[dict, str]:
        """(the assistant message, the finish reason): tool calls parsed out of the text when tools are on."""
        from shipyard.serving.tools import parse_calls

        if not self.tools:
            return {"role": "assistant", "content": g.text}, g.finish_reason
        content, calls = parse_calls(g.text, self.tools)
        if not calls:
            return {"role": "assistant", "content": g.text}, g.finish_reason
        return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"

    def final_chunk(self, i: int, g: Generation) -> dict:
        """A stream's one delta when ``holds_text``: the content or the calls, with the finish reason."""
        message, finish = self.message(g)
        delta = {k: v for k, v in message.items() if k != "role" and v is not None}
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": n, **c} for n, c in enumerate(delta["tool_calls"])]
        return {"id": self.rid, "object": "chat.completion.chunk", "created": self.created, "model": self.req.model,
                "choices": [{"index": i, "delta": delta, "finish_reason": finish}]}

    def _entries(self, entries: list[TokenLogprob]) -> list[dict]:
        def one(token: int, logprob: float) -> dict:
            text = self.text_of(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        return [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries]

    def chunk(self, i: int, text: str | None, finish: str | None, entry: TokenLogprob | None = None,
              offset: int = 0) -> dict:
        delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
        choice = {"index": i, "delta": delta, "finish_reason": finish}
        if entry is not None:
            choice["logprobs"] = {"content": self._entries([entry])}
        return {"id": self.rid, "object": "chat.completion.chunk", "created": self.created, "model": self.req.model,
                "choices": [choice]}

    def body(self, gens: list[Generation], usage) -> dict:
        from openai.types.chat import ChatCompletion, ChatCompletionMessage
        from openai.types.chat.chat_completion import Choice, ChoiceLogprobs

        def logprobs(g: Generation):
            return None if g.logprobs is None else ChoiceLogprobs(content=self._entries(g.logprobs))

        shaped = [self.message(g) for g in gens]
        if self.on_answer is not None and gens:
            self.on_answer(gens[0].text)
        return ChatCompletion(
            id=self.rid, object="chat.completion", created=self.created, model=self.req.model, usage=usage,
            choices=[Choice(index=i, finish_reason=finish, logprobs=logprobs(g),
                            message=ChatCompletionMessage(**message))
                     for i, (g, (message, finish)) in enumerate(zip(gens, shaped, strict=True))]
        ).model_dump(exclude_none=True)


class CompletionShape(_Shape):
    def __init__(self, req, llm):
        self.llm, self.text_of = llm, TokenText(llm.tokenizer, req.return_tokens_as_token_ids)
        prompts = req.prompts()
        super().__init__(req, "cmpl", prompts[0] if isinstance(prompts[0], str) else "")

    @staticmethod
    def render(text: str) -> str:
        return text

    def _legacy(self, entries: list[TokenLogprob], offset: int) -> dict:
        tokens = [self.text_of(e.token) for e in entries]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries], "text_offset": offsets,
                "top_logprobs": [None if e.logprob is None else {self.text_of(t): lp for t, lp in e.top}
                                 for e in entries]}

    def chunk(self, i: int, text: str | None, finish: str | None, entry: TokenLogprob | None = None,
              offset: int = 0) -> dict:
        logprobs = None if entry is None else self._legacy([entry], offset)
        return {"id": self.rid, "object": "text_completion", "created": self.created, "model": self.req.model,
                "choices": [{"index": i, "text": text or "", "finish_reason": finish, "logprobs": logprobs}]}

    def text_and_logprobs(self, g: Generation) -> tuple[str, dict | None]:
        """A choice's text (the prompt first with echo) and its legacy log-probs."""
        prompt_text = self.llm.tokenizer.decode(g.prompt_ids, skip_special_tokens=True) if self.req.echo else ""
        if g.logprobs is None:
            return prompt_text + g.text, None
        entries = (g.prompt_logprobs or []) + g.logprobs if self.req.echo else g.logprobs
        return prompt_text + g.text, self._legacy(entries, 0)

    def body(self, gens: list[Generation], usage) -> dict:
        from openai.types import Completion, CompletionChoice

        texts = [self.text_and_logprobs(g) for g in gens]
        body = Completion(id=self.rid, object="text_completion", created=self.created, model=self.req.model,
                          usage=usage, choices=[CompletionChoice(index=i, text=text, finish_reason=g.finish_reason)
                                                for i, (g, (text, _)) in enumerate(zip(gens, texts, strict=True))]
                          ).model_dump(exclude_none=True)
        for choice, (_, logprobs) in zip(body["choices"], texts, strict=True):
            choice["logprobs"] = logprobs  # set after validation: OpenAI's own null for the prompt's first token
        return body
