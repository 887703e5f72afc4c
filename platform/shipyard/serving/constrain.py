"""Constrained decoding for ``response_format`` (``json_object``, ``json_schema``), the same for every engine.

    grammar = grammar_for("json_schema", schema)        # in the API layer: an invalid schema is a 400
    c = Constraint(grammar, tokenizers.get(tokenizer, eos_ids))   # per row, in the engine
    token = choose(c.masked(logits), ...); done = c.accept(token)

Both engines sample in Shipyard's ``sampling.choose``, so one logit mask serves them: llguidance
(Microsoft's Rust engine behind guidance, and the structured-output backend of vLLM, SGLang and
llama.cpp) compiles the JSON Schema to a grammar over the HF tokenizer's tokens and computes, per
step, which tokens keep the output valid (tens of microseconds). Chosen over lm-format-enforcer (pure
Python, slower per token, narrower schema support) and outlines-core/xgrammar (comparable, but llguidance
has the widest JSON Schema coverage and a stable C-level mask API). A row ends when the grammar is
complete (nothing but end-of-text may follow), or at max_tokens like any other row.
"""

from __future__ import annotations

import threading

MAX_SCHEMA_CHARS = 100_000
# JSON as models usually write it, and no free whitespace: a weak model cannot pad an answer with blanks forever
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_for(kind: str, schema: dict | None = None) -> str | None:
    """The llguidance grammar of a response format (None for text); ValueError when the schema is unusable."""
    import json

    from llguidance import LLMatcher

    if kind == "text":
        return None
    if kind == "json_object":
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise ValueError("response_format.json_schema.schema: a JSON Schema object is required")
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise ValueError(f"response_format: the schema is over {MAX_SCHEMA_CHARS} characters")
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_STYLE)
    except ValueError as exc:
        raise ValueError(f"response_format: {exc}") from None
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise ValueError(f"response_format: the schema cannot be enforced: {error}")
    return grammar


class Tokenizers:
    """llguidance's view of a HF tokenizer, built once (about a second) per engine."""

    def __init__(self):
        self._lock, self._made = threading.Lock(), None

    def get(self, tokenizer, eos_ids: set[int]):
        with self._lock:
            if self._made is None:
                from llguidance import LLTokenizer

                eos = sorted(eos_ids) or None
                self._made = LLTokenizer(_without_prefix_space(tokenizer), eos_token=eos[0] if eos and len(eos) == 1
                                         else eos)
            return self._made


def _without_prefix_space(tokenizer) -> str:
    """The tokenizer's JSON with ``add_prefix_space`` off in its pre-tokenizer (as llguidance.hf copies it,
    padding and truncation off). With it on (Shipyard's own trained BPE), llguidance's mask asks for a
    leading-space token that its parser then refuses; the token -> bytes map, all a mask needs, is unchanged."""
    import json

    backend = tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())
    spec["padding"] = spec["truncation"] = None

    def off(node):
        if isinstance(node, dict):
            if "add_prefix_space" in node and node.get("type") in ("ByteLevel", "Metaspace"):
                node["add_prefix_space"] = False
            for value in node.values():
                off(value)
        elif isinstance(node, list):
            for value in node:
                off(value)

    off(spec.get("pre_tokenizer"))
    return json.dumps(spec)


class Constraint:
    """One row's grammar state: the mask of its next token, and the tokens it has taken."""

    def __init__(self, grammar: str, ll_tokenizer):
        from llguidance import LLMatcher

        self.matcher = LLMatcher(ll_tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise ValueError(f"response_format: {self.matcher.get_error()}")
        self.n_vocab = ll_tokenizer.vocab_size

    def masked(self, logits):
        """``logits`` [vocab] with every token the grammar forbids at -inf (a copy)."""
        import numpy as np
        import torch

        words = np.zeros((self.n_vocab + 31) // 32, dtype=np.int32)
        self.matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        allowed = np.unpackbits(words.view(np.uint8), bitorder="little")[: logits.shape[-1]]
        keep = torch.zeros(logits.shape[-1], dtype=torch.bool)
        keep[: allowed.shape[0]] = torch.from_numpy(allowed.astype(bool))
        return logits.masked_fill(~keep.to(logits.device), float("-inf"))

    def accept(self, token: int) -> bool:
        """Take ``token``; True when the output is complete (or the matcher failed): the row ends."""
        ok = self.matcher.consume_token(token)
        return not ok or self.matcher.is_stopped()
