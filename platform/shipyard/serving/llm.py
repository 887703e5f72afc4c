"""The LLM runtime as a KServe model: ``load()`` sets ``ready``; ``predict`` speaks KServe v1.

    python -m shipyard.serving models:/shipyard-tiny@champion --port 8080   # same as `shipyard serve`

Generation runs in a worker thread (never on the event loop) under a lock: one model instance,
one generation at a time; batching arrives with the serving issue.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

from kserve import Model
from kserve.errors import InvalidInput


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


class ShipyardLLM(Model):
    """A causal LM (plain or int8-quantized Shipyard directory) behind KServe's ModelServer."""

    def __init__(self, name: str, model_dir: str | Path, max_new_tokens: int = 64):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()
        self.model = self.tokenizer = None

    def load(self) -> bool:
        from shipyard.models.causal_lm import load_causal_lm, load_tokenizer

        self.model = load_causal_lm(self.model_dir)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.context_length = int(self.model.config.max_position_embeddings)
        self.ready = True
        return self.ready

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def check_fits(self, prompt: str, max_tokens: int) -> int:
        """Prompt token count; raises InvalidInput when prompt + max_tokens exceeds the context."""
        n = self.count_tokens(prompt)
        if n + max_tokens > self.context_length:
            raise InvalidInput(f"prompt ({n} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                               f"context length ({self.context_length})")
        return n

    def generate(self, prompt: str, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 stop: list[str] | None = None, seed: int | None = None) -> Generation:
        """Blocking generation of one completion (call through ``agenerate`` from async code)."""
        import torch

        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        sample = temperature > 0
        with self._lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                **enc, max_new_tokens=max_tokens, do_sample=sample,
                temperature=temperature if sample else None, top_p=top_p if sample else None,
                top_k=None, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        finish = "stop" if len(new) < max_tokens or (len(new) and new[-1] == self.tokenizer.eos_token_id) \
            else "length"
        for s in stop or []:
            if s and s in text:
                text, finish = text[: text.index(s)], "stop"
        return Generation(text, int(enc["input_ids"].shape[1]), int(len(new)), finish)

    async def agenerate(self, *args, **kwargs) -> Generation:
        return await asyncio.to_thread(self.generate, *args, **kwargs)

    async def predict(self, payload, headers=None, response_headers=None) -> dict:
        """KServe v1: ``{"instances": ["prompt", ...]}`` or ``[{"prompt": ..., "max_tokens": n}]``."""
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput('expected {"instances": [...]}')
        predictions = []
        for item in payload["instances"]:
            prompt = item if isinstance(item, str) else item.get("prompt") if isinstance(item, dict) else None
            if not isinstance(prompt, str):
                raise InvalidInput("each instance must be a string or an object with a string 'prompt'")
            max_tokens = int(item.get("max_tokens", self.max_new_tokens)) if isinstance(item, dict) \
                else self.max_new_tokens
            self.check_fits(prompt, max_tokens)
            predictions.append((await self.agenerate(prompt, max_tokens)).text)
        return {"predictions": predictions}
