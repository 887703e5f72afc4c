"""The LLM runtime as a KServe model: ``load()`` sets ``ready``; ``predict`` speaks KServe v1.

    python -m shipyard.serving models:/shipyard-tiny@champion --port 8080   # same as `shipyard serve`

Generation runs in the engine's own thread (``serving.engine``: iteration-level batching, never on the
event loop). Sampling follows OpenAI's parameters (temperature 0 is greedy; top_p, top_k, seed, stop
strings, frequency/presence penalties on the tokens generated so far) plus ``repetition_penalty``
(CTRL's, over prompt and completion), with per-token log-probabilities on request. ``submit`` is the
async interface (the OpenAI routes); ``generate``/``generate_batch``/``stream`` block, for scripts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from kserve import Model
from kserve.errors import InvalidInput

from shipyard.serving.engine import Job, QueueFull
from shipyard.serving.params import Generation, SamplingParams

__all__ = ["Generation", "SamplingParams", "ShipyardLLM", "QueueFull"]


class ShipyardLLM(Model):
    """A causal LM (plain or quantized Shipyard directory) behind KServe's ModelServer.

    ``adapters`` ({name: adapter dir}) are LoRA adapters attached at load to one copy of the base,
    each served under its own model name (vLLM's convention); a request picks one by ``model``,
    and the base name gets the base with adapters disabled. ``device``/``dtype``
    (``shipyard.models.device``): ``auto`` serves on the pod's GPU in bfloat16 when it has one, else
    on the CPU in float32; a quantized model runs where its kernels do.
    """

    def __init__(self, name: str, model_dir: str | Path, max_new_tokens: int = 64,
                 adapters: dict[str, str | Path] | None = None, device: str = "auto", dtype: str = "auto",
                 max_batch_size: int = 8, max_queue: int = 64, engine: str = "auto",
                 vllm: tuple[str, float] = ("http://127.0.0.1:8001/v1", 900.0)):
        super().__init__(name)
        self.vllm_url, self.vllm_wait_s = vllm  # --engine vllm: the upstream server, and the wait for it
        self.requested_engine, self.engine_kind = engine, None  # engine_kind: set by load()
        self.runtime = None  # the llama.cpp engine's LlamaRuntime
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.model_dir = Path(model_dir)
        self.max_new_tokens = max_new_tokens
        self.requested_device, self.requested_dtype = device, dtype
        self.device = self.dtype_name = None  # set by load(): "cuda"/"cpu", "bfloat16"/"float32"/a quantization
        self.adapters = {k: Path(v) for k, v in (adapters or {}).items()}
        if name in self.adapters:
            raise ValueError(f"adapter name {name!r} is the base model's name")
        self.model = self.tokenizer = self.engine = None
        self.seq2seq = False

    @property
    def served_names(self) -> list[str]:
        return [self.name, *self.adapters]

    def load(self) -> bool:
        from shipyard.models.engines import choose_engine

        self.engine_kind, gguf = choose_engine(self.model_dir, self.requested_engine, self.requested_device,
                                               bool(self.adapters))
        if self.engine_kind == "llamacpp":
            from shipyard.serving.llamacpp import load_llamacpp

            load_llamacpp(self, gguf)
        elif self.engine_kind == "vllm":
            from shipyard.serving.vllm_engine import load_vllm

            load_vllm(self)
        else:
            self._load_transformers()
        self.start_engine(self.max_batch_size, self.max_queue)
        self.ready = True
        return self.ready

    def _load_transformers(self) -> None:
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
        self.vocab_size = int(getattr(getattr(self.model, "config", None), "vocab_size", 0) or len(self.tokenizer))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def chat_prompt(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The chat template's prompt; ``tools`` (function specs) go to a template that renders them."""
        if getattr(self.tokenizer, "chat_template", None):
            extra = {"tools": tools} if tools else {}
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"

    def check_fits(self, prompt: str | list[int], max_tokens: int) -> list[int]:
        """The prompt's token ids; raises InvalidInput when prompt + max_tokens exceeds the context
        (for seq2seq, when either does: encoder and decoder have their own). Blocking: tokenizes."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        n = len(ids)
        if n == 0:
            raise InvalidInput("the prompt is empty (it has no tokens)")
        if self.seq2seq and max(n, max_tokens) > self.context_length:
            raise InvalidInput(f"prompt ({n} tokens) or max_tokens ({max_tokens}) exceeds the model's "
                               f"context length ({self.context_length})")
        if not self.seq2seq and n + max_tokens > self.context_length:
            raise InvalidInput(f"prompt ({n} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                               f"context length ({self.context_length})")
        if max(ids) >= self.vocab_size or min(ids) < 0:
            raise InvalidInput(f"prompt token ids must lie in [0, {self.vocab_size})")
        return ids

    @contextmanager
    def _variant(self, adapter: str | None):
        """In the engine thread: the named adapter active, or the base with adapters disabled."""
        if not self.adapters:
            yield
        elif adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(adapter)
            yield

    def start_engine(self, max_batch_size: int = 8, max_queue: int = 64):
        """The engine that decodes every request of this model (started by ``load`` with defaults)."""
        from shipyard.serving.engine import Engine

        if self.engine is not None:
            self.engine.close()
        if self.engine_kind == "vllm":
            from shipyard.serving.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(self.vllm_url, self.vllm_model, self.tokenizer, self.eos_ids,
                                     max_batch_size, max_queue).start()
            return self.engine
        if self.runtime is not None:  # llama.cpp: the engine's rows are the runtime's sequences
            from shipyard.serving.llamacpp import LlamaBatch, fit_runtime

            fit_runtime(self, max_batch_size)
            self.engine = Engine(None, self.tokenizer, "cpu", new_batch=lambda: LlamaBatch(self.runtime),
                                 eos_ids=self.eos_ids, max_batch_size=max_batch_size, max_queue=max_queue).start()
            return self.engine
        self.engine = Engine(self.model, self.tokenizer, self.device, seq2seq=self.seq2seq, variant=self._variant,
                             max_batch_size=max_batch_size, max_queue=max_queue).start()
        return self.engine

    def submit(self, ids: list[int], params: SamplingParams, timeout_s: float | None = None) -> JobEvents:
        """Queue one generation now (raises QueueFull); its events arrive on the returned async iterator.
        Call from the event loop; closing the iterator (or cancelling its reader) cancels the job."""
        events = JobEvents(asyncio.get_running_loop())
        events.job = Job(ids, params, events.sink, deadline=None if timeout_s is None else time.monotonic() + timeout_s)
        self.engine.submit(events.job)
        return events

    async def agenerate(self, prompt: str | list[int], params: SamplingParams,
                        timeout_s: float | None = None) -> Generation:
        events = self.submit(prompt if isinstance(prompt, list) else self.encode(prompt), params, timeout_s)
        return await events.result()

    def generate(self, prompt: str, params: SamplingParams) -> Generation:
        """Blocking: one completion (from a thread that is not the engine's)."""
        return self.generate_batch([prompt], [params])[0]

    def generate_batch(self, prompts: list[str], params: list[SamplingParams]) -> list[Generation]:
        """Blocking: the completions of ``prompts``, decoded together by the engine."""
        waits = []
        for prompt, p in zip(prompts, params, strict=True):
            done, box = threading.Event(), {}
            self.engine.submit(Job(self.encode(prompt), p, _collector(done, box)))
            waits.append((done, box))
        results = []
        for done, box in waits:
            done.wait()
            if "error" in box:
                raise box["error"]
            results.append(box["done"])
        return results

    def stream(self, prompt: str, params: SamplingParams):
        """Blocking: text deltas as they decode; the last item is the finished ``Generation``."""
        import queue

        q: queue.Queue = queue.Queue()
        self.engine.submit(Job(self.encode(prompt), params, lambda kind, payload: q.put((kind, payload))))
        while True:
            kind, payload = q.get()
            if kind == "error":
                raise payload
            if kind == "done":
                yield payload
                return
            if payload[0]:
                yield payload[0]

    async def predict(self, payload, headers=None, response_headers=None) -> dict:
        """KServe v1: ``{"instances": ["prompt", ...]}`` or ``[{"prompt": ..., "max_tokens": n}]``."""
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput('expected {"instances": [...]}')
        if not 1 <= len(payload["instances"]) <= 64:
            raise InvalidInput("instances: 1 to 64 prompts")
        requests = [self._instance(item) for item in payload["instances"]]
        fitted = [await asyncio.to_thread(self.check_fits, prompt, n) for prompt, n in requests]
        try:
            gens = await asyncio.gather(*(self.agenerate(ids, SamplingParams(n)) for ids, (_, n)
                                          in zip(fitted, requests, strict=True)))
        except QueueFull as exc:
            from kserve.errors import ServerNotReady

            raise ServerNotReady(str(exc)) from exc
        return {"predictions": [g.text for g in gens]}

    def _instance(self, item) -> tuple[str, int]:
        prompt = item if isinstance(item, str) else item.get("prompt") if isinstance(item, dict) else None
        if not isinstance(prompt, str):
            raise InvalidInput("each instance must be a string or an object with a string 'prompt'")
        from shipyard.serving.openai_schema import utf8

        try:
            utf8(prompt)
        except ValueError as exc:
            raise InvalidInput(f"prompt: {exc}") from None
        n = item.get("max_tokens", self.max_new_tokens) if isinstance(item, dict) else self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.context_length:
            raise InvalidInput(f"max_tokens must be an integer from 1 to {self.context_length}")
        return prompt, n


def _collector(done: threading.Event, box: dict):
    def sink(kind, payload):
        if kind in ("done", "error"):
            box[kind] = payload
            done.set()
    return sink


class JobEvents:
    """The async side of one engine job: ``async for kind, payload in events`` (deltas, then done or error)."""

    def __init__(self, loop):
        self.loop, self.queue, self.job = loop, asyncio.Queue(), None

    def sink(self, kind, payload) -> None:  # engine thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            self.job.cancel.set()

    def cancel(self) -> None:
        self.job.cancel.set()

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.queue is None:
            raise StopAsyncIteration
        try:
            kind, payload = await self.queue.get()
        except BaseException:
            self.cancel()
            raise
        if kind in ("done", "error"):
            self.queue = None
        if kind == "error":
            raise payload
        return kind, payload

    async def result(self) -> Generation:
        """Wait for the finished generation (cancelling the job if the waiter is cancelled)."""
        async for kind, payload in self:
            if kind == "done":
                return payload
        raise RuntimeError("the engine ended the job without a result")
