"""The LLM runtime as a KServe model: ``load()`` sets ``ready``; ``predict`` speaks KServe v1.

    python -m shipyard.serving models:/shipyard-tiny@champion --port 8080   # same as `shipyard serve`

Generation runs in a worker thread (never on the event loop) under a lock: one model instance,
one generation at a time. Sampling follows OpenAI's parameters (temperature 0 is greedy; top_p,
top_k, seed, stop strings, frequency/presence penalties on the tokens generated so far) plus
``repetition_penalty`` (CTRL's, over prompt and completion). ``stream`` yields text as it decodes.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
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


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    adapter: str | None = None  # a LoRA adapter served under its own model name; None = the base


def penalty_processor(prompt_len: int, frequency: float, presence: float):
    """OpenAI's penalties: logit -= count * frequency + (count > 0) * presence, over generated tokens."""
    import torch
    from transformers import LogitsProcessor

    class _Penalties(LogitsProcessor):
        def __call__(self, input_ids, scores):
            generated = input_ids[:, prompt_len:]
            if generated.shape[1] == 0:
                return scores
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            return scores - counts * frequency - (counts > 0).to(scores.dtype) * presence

    return _Penalties()


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    hits = [text.index(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` might start a stop string (not safe to stream yet)."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return keep


class ShipyardLLM(Model):
    """A causal LM (plain or quantized Shipyard directory) behind KServe's ModelServer.

    ``adapters`` ({name: adapter dir}) are LoRA adapters attached at load to one copy of the base,
    each served under its own model name (vLLM's convention); a request picks one by ``model``,
    and the base name gets the base with adapters disabled. ``device``/``dtype``
    (``shipyard.models.device``): ``auto`` serves on the pod's GPU in bfloat16 when it has one, else
    on the CPU in float32; a quantized model runs where its kernels do.
    """

    def __init__(self, name: str, model_dir: str | Path, max_new_tokens: int = 64,
                 adapters: dict[str, str | Path] | None = None, device: str = "auto", dtype: str = "auto"):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.max_new_tokens = max_new_tokens
        self.requested_device, self.requested_dtype = device, dtype
        self.device = self.dtype_name = None  # set by load(): "cuda"/"cpu", "bfloat16"/"float32"/a quantization
        self.adapters = {k: Path(v) for k, v in (adapters or {}).items()}
        if name in self.adapters:
            raise ValueError(f"adapter name {name!r} is the base model's name")
        self._lock = threading.Lock()
        self.model = self.tokenizer = None
        self.seq2seq = False

    @property
    def served_names(self) -> list[str]:
        return [self.name, *self.adapters]

    def load(self) -> bool:
        from transformers import AutoConfig

        from shipyard.models.causal_lm import load_causal_lm, load_tokenizer
        from shipyard.models.device import place, resolve

        # before loading: a device the model or the machine cannot use fails first
        self.device, dtype, method = resolve(self.model_dir, self.requested_device, self.requested_dtype)
        self.dtype_name = method or str(dtype).removeprefix("torch.")
        config = AutoConfig.from_pretrained(str(self.model_dir), trust_remote_code=False)
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        if self.seq2seq:  # T5-style: the prompt goes to the encoder, the answer comes from the decoder
            import torch
            from transformers import AutoModelForSeq2SeqLM

            if self.adapters or method:
                raise ValueError(f"{self.model_dir}: seq2seq models are served plain (no adapters, not quantized)")
            self.model = AutoModelForSeq2SeqLM.from_pretrained(
                str(self.model_dir), use_safetensors=True, trust_remote_code=False, dtype=torch.float32).eval()
        elif self.adapters:
            from shipyard.models.adapters import load_with_adapters

            if method:
                raise ValueError(f"{self.model_dir}: LoRA adapters go on a float base; this one is quantized")
            self.model = load_with_adapters(self.model_dir, self.adapters)
        else:
            self.model = load_causal_lm(self.model_dir)
        self.model = place(self.model, self.device, dtype)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.context_length = int(getattr(config, "max_position_embeddings", None)
                                  or getattr(config, "n_positions", None) or self.tokenizer.model_max_length)
        self.ready = True
        return self.ready

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def chat_prompt(self, messages: list[dict]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"

    def _prefix(self, enc) -> int:
        """Leading tokens of ``generate``'s output that are not new: the prompt, or the decoder start."""
        return 1 if self.seq2seq else enc["input_ids"].shape[1]

    def check_fits(self, prompt: str, max_tokens: int) -> int:
        """Prompt token count; raises InvalidInput when prompt + max_tokens exceeds the context
        (for seq2seq, when either does: encoder and decoder have their own)."""
        n = self.count_tokens(prompt)
        if self.seq2seq and max(n, max_tokens) > self.context_length:
            raise InvalidInput(f"prompt ({n} tokens) or max_tokens ({max_tokens}) exceeds the model's "
                               f"context length ({self.context_length})")
        if not self.seq2seq and n + max_tokens > self.context_length:
            raise InvalidInput(f"prompt ({n} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                               f"context length ({self.context_length})")
        return n

    def _generate_kwargs(self, enc, p: SamplingParams) -> dict:
        from transformers import LogitsProcessorList

        sample = p.temperature > 0
        kwargs = dict(max_new_tokens=p.max_tokens, do_sample=sample, pad_token_id=self.tokenizer.pad_token_id,
                      eos_token_id=self.tokenizer.eos_token_id, temperature=p.temperature if sample else None,
                      top_p=p.top_p if sample else None, top_k=(p.top_k or None) if sample else None)
        if p.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = p.repetition_penalty
        if p.frequency_penalty or p.presence_penalty:
            kwargs["logits_processor"] = LogitsProcessorList(
                [penalty_processor(self._prefix(enc), p.frequency_penalty, p.presence_penalty)])
        if p.stop:
            kwargs.update(stop_strings=list(p.stop), tokenizer=self.tokenizer)
        return kwargs

    @contextmanager
    def _variant(self, adapter: str | None):
        """Inside the lock: the named adapter active, or the base with adapters disabled."""
        if not self.adapters:
            yield
        elif adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(adapter)
            yield

    def generate(self, prompt: str, params: SamplingParams) -> Generation:
        """Blocking generation of one completion (call through ``agenerate`` from async code)."""
        import torch

        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        with self._lock, torch.no_grad(), self._variant(params.adapter):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            out = self.model.generate(**enc, **self._generate_kwargs(enc, params))
        return self._result(out[0, self._prefix(enc):], int(enc["input_ids"].shape[1]), params)

    def _result(self, new, prompt_tokens: int, p: SamplingParams) -> Generation:
        """A finished completion from its new token ids: text cut at a stop string, finish reason."""
        text, stopped = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), p.stop)
        ended = len(new) < p.max_tokens or (len(new) and int(new[-1]) == self.tokenizer.eos_token_id)
        return Generation(text, prompt_tokens, int(len(new)), "stop" if stopped or ended else "length")

    def generate_batch(self, prompts: list[str], params: list[SamplingParams]) -> list[Generation]:
        """One left-padded ``generate`` for prompts that share their settings (the batcher's unit)."""
        import torch

        p = params[0]
        if len(prompts) == 1:
            return [self.generate(prompts[0], p)]
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with self._lock, torch.no_grad(), self._variant(p.adapter):
            out = self.model.generate(**enc, **self._generate_kwargs(enc, p))
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        results = []
        for row, mask in zip(out[:, self._prefix(enc):], enc["attention_mask"], strict=True):
            ends = [i for i, t in enumerate(row.tolist()) if t == eos or (t == pad and pad != eos)]
            n = (ends[0] + 1 if int(row[ends[0]]) == eos else ends[0]) if ends else len(row)  # keep EOS, drop pads
            results.append(self._result(row[:n], int(mask.sum()), p))
        return results

    async def agenerate(self, prompt: str, params: SamplingParams) -> Generation:
        return await asyncio.to_thread(self.generate, prompt, params)

    def stream(self, prompt: str, params: SamplingParams):
        """Yield text deltas as they decode; the last item is the finished ``Generation``.

        Text that could be the start of a stop string is held back until it is known not to be.
        """
        import torch
        from transformers import TextIteratorStreamer

        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        counter = {"tokens": 0, "last": None}

        class _Counting(TextIteratorStreamer):
            def put(self, value):
                if not (self.skip_prompt and self.next_tokens_are_prompt):
                    counter["tokens"] += int(value.numel())
                    counter["last"] = int(value.reshape(-1)[-1])
                super().put(value)

        streamer = _Counting(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        errors: list[BaseException] = []

        def work():
            try:
                with self._lock, torch.no_grad(), self._variant(params.adapter):
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    self.model.generate(**enc, streamer=streamer, **self._generate_kwargs(enc, params))
            except BaseException as exc:  # surfaced to the consumer below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text, sent, stopped = "", 0, False
        for piece in streamer:
            if stopped:
                continue  # drain: generation ends at the stop string's tokens (stop_strings)
            text += piece
            cut, stopped = cut_at_stop(text, params.stop)
            safe = len(cut) if stopped else len(cut) - held_back(cut, params.stop)
            if safe > sent:
                yield cut[sent:safe]
                sent = safe
        thread.join()
        if errors:
            raise errors[0]
        final, found = cut_at_stop(text, params.stop)
        if not found and len(final) > sent:
            yield final[sent:]
        n = counter["tokens"]
        ended = found or n < params.max_tokens or counter["last"] == self.tokenizer.eos_token_id
        yield Generation(final, int(enc["input_ids"].shape[1]), n, "stop" if ended else "length")

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
            predictions.append((await self.agenerate(prompt, SamplingParams(max_tokens))).text)
        return {"predictions": predictions}
