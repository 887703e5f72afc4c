"""The vllm engine: Shipyard's front (OpenAI routes, RAG, tenancy, limits, metrics) over a vLLM OpenAI server.

    shipyard serve /mnt/models --engine vllm --vllm-url http://127.0.0.1:8001/v1
    # beside it, in the CUDA image: vllm serve /mnt/models --port 8001 --return-tokens-as-token-ids

``VLLMEngine`` keeps ``serving.engine.Engine``'s protocol (``submit(Job)``, the same sink events, cancel and
deadlines), so every application feature behaves as with the other engines; only generation is vLLM's, which
batches and schedules on the GPU itself. Shipyard tokenizes and renders (the chat template, RAG, tools) and
sends token ids to vLLM's ``/completions``; each streamed token comes back as ``token_id:N`` with its log-prob,
so completion tokens, log-probs and stop reasons are the engine's own. A client that goes away closes the
upstream stream, which aborts the request in vLLM. Up to ``max_batch_size`` requests are in flight upstream
and ``max_queue`` more wait here (then 429); an unreachable or failing upstream is a 503 (``EngineUnavailable``).
The chart runs vLLM as the predictor pod's second container (``serving.runtime.engine: vllm``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from kserve.errors import InvalidInput

from shipyard.serving.engine import EngineUnavailable, Job, QueueFull, cut_at_stop, past_deadline, was_cancelled
from shipyard.serving.params import Generation, TokenLogprob

CANCEL_POLL_S = 0.05
LATE = "generation passed the request's deadline"
CONNECT_TIMEOUT_S = 10.0


class UpstreamRejected(InvalidInput):
    """vLLM refused the request (4xx): the client's to fix, answered 400 with vLLM's message."""


class VLLMEngine:
    """Jobs to a vLLM OpenAI endpoint (``url`` ends in /v1) serving ``model``, from one asyncio loop thread."""

    def __init__(self, url: str, model: str, tokenizer, eos_ids: set[int], max_batch_size: int = 8,
                 max_queue: int = 64):
        self.url, self.model, self.tokenizer, self.eos_ids = url.rstrip("/"), model, tokenizer, eos_ids
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self._lock, self._waiting, self._running = threading.Lock(), 0, 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shipyard-vllm", daemon=True)
        self._slots = self._client = None

    def start(self) -> VLLMEngine:
        import httpx

        self._thread.start()

        async def setup():
            self._slots = asyncio.Semaphore(self.max_batch_size)
            self._client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S))

        asyncio.run_coroutine_threadsafe(setup(), self._loop).result()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    @property
    def depth(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def constraint(self, grammar: str):
        raise ValueError("response_format and forced tool calls are not available on the vllm engine yet "
                         "(serve with --engine transformers or llamacpp for them)")

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises QueueFull when ``max_queue`` jobs already wait for an upstream slot."""
        from shipyard.serving.metrics import QUEUE_DEPTH

        with self._lock:
            if self._waiting + self._running >= self.max_queue + self.max_batch_size:
                raise QueueFull(f"the runtime is at its queue limit ({self.max_queue} requests); retry later")
            self._waiting += 1
            QUEUE_DEPTH.set(self._waiting)
        asyncio.run_coroutine_threadsafe(self._run(job), self._loop)

    async def _run(self, job: Job) -> None:
        from shipyard.serving.metrics import QUEUE_DEPTH, RUNNING

        try:
            async with self._slots:
                with self._lock:
                    self._waiting -= 1
                    self._running += 1
                    QUEUE_DEPTH.set(self._waiting)
                    RUNNING.set(self._running)
                try:
                    if not was_cancelled(job) and not past_deadline(job, LATE):
                        await _until_cancelled(job, self._generate(job))
                finally:
                    with self._lock:
                        self._running -= 1
                        RUNNING.set(self._running)
        except asyncio.CancelledError:
            pass
        except (UpstreamRejected, QueueFull, EngineUnavailable) as exc:
            job.sink("error", exc)
        except Exception as exc:  # connection refused, reset, bad gateway: the engine is unavailable
            job.sink("error", EngineUnavailable(f"the vLLM engine at {self.url} failed: {type(exc).__name__}: "
                                                f"{exc}"[:500]))

    async def _generate(self, job: Job) -> None:
        """One job: streamed from vLLM token by token, or (echo: prompt log-probs) in one response."""
        body = self.request(job)
        if job.params.prompt_logprobs:
            response = await self._client.post("/completions", json=body)
            await _check(response)
            choice = response.json()["choices"][0]
            entries = _entries(choice.get("logprobs"))
            prompt_lps, entries = entries[:len(job.prompt)], entries[len(job.prompt):]
            if prompt_lps:
                prompt_lps[0] = TokenLogprob(prompt_lps[0].token, None, [])
            self._finish(job, entries, choice.get("finish_reason"), prompt_lps)
            return
        entries, finish = [], None
        async with self._client.stream("POST", "/completions", json=body) as response:
            await _check(response)
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or []:
                    new = _entries(choice.get("logprobs"))
                    for k, entry in enumerate(new):
                        job.sink("delta", (choice.get("text", "") if k == 0 else "",
                                           entry if job.params.logprobs is not None else None))
                    if not new and choice.get("text"):
                        job.sink("delta", (choice["text"], None))
                    entries += new
                    finish = choice.get("finish_reason") or finish
        self._finish(job, entries, finish, None, streamed=True)

    def _finish(self, job: Job, entries: list[TokenLogprob], finish: str | None, prompt_lps, streamed=False):
        if finish not in ("stop", "length"):
            raise EngineUnavailable(f"the vLLM engine ended the request with finish_reason {finish!r}")
        tokens = [e.token for e in entries]
        text = self.decode(tokens)
        if job.params.stop:
            text = cut_at_stop(text, job.params.stop)[0]
        if not streamed:
            for k, entry in enumerate(entries):
                job.sink("delta", (text if k == 0 else "", entry if job.params.logprobs is not None else None))
        logprobs = entries if job.params.logprobs is not None else None
        job.sink("done", Generation(text, len(job.prompt), len(tokens), finish, tokens, logprobs, prompt_lps,
                                    job.prompt))

    def request(self, job: Job) -> dict:
        """vLLM's ``/completions`` body for a job: token-id prompt, OpenAI sampling and vLLM's extensions."""
        p = job.params
        body = {"model": self.model, "prompt": job.prompt, "max_tokens": p.max_tokens, "temperature": p.temperature,
                "top_p": p.top_p, "frequency_penalty": p.frequency_penalty, "presence_penalty": p.presence_penalty,
                "logprobs": p.logprobs or 0, "return_tokens_as_token_ids": True, "stream": not p.prompt_logprobs}
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        if p.top_k:
            body["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty
        if p.prompt_logprobs:
            body["echo"] = True
        return body


async def _until_cancelled(job: Job, work) -> None:
    """Run ``work`` until it ends, the job is cancelled (closing the upstream stream aborts it in vLLM) or its
    deadline passes (a TimeoutError event)."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=CANCEL_POLL_S)
            if not task.done() and (was_cancelled(job) or past_deadline(job, LATE)):
                task.cancel()
                await asyncio.wait({task})  # once: the cancel is counted, or the TimeoutError sent, one time
        if not task.cancelled():
            task.result()
    finally:
        if not task.done():
            task.cancel()


async def _check(response) -> None:
    if response.status_code < 400:
        return
    await response.aread()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    if response.status_code in (400, 404, 413, 422):
        raise UpstreamRejected(f"vLLM: {message}")
    if response.status_code == 429:
        raise QueueFull(f"vLLM is at its queue limit: {message}")
    raise EngineUnavailable(f"vLLM answered {response.status_code}: {message}")


def _entries(logprobs: dict | None) -> list[TokenLogprob]:
    """OpenAI's legacy completions log-probs, with tokens named ``token_id:N``, as TokenLogprobs."""
    if not logprobs:
        return []
    out = []
    for name, lp, top in zip(logprobs["tokens"], logprobs["token_logprobs"],
                             logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"]), strict=True):
        out.append(TokenLogprob(_token_id(name), lp, [(_token_id(t), v) for t, v in (top or {}).items()]))
    return out


def _token_id(name: str) -> int:
    if not name.startswith("token_id:"):
        raise EngineUnavailable(f"the vLLM engine named a token {name[:40]!r}, not token_id:N: start vllm with "
                                "--return-tokens-as-token-ids")
    return int(name.removeprefix("token_id:"))


def load_vllm(llm) -> None:
    """Set up a ShipyardLLM for the vllm engine: tokenizer, context and EOS ids from the model directory (the
    same files vLLM loads), then wait up to ``llm.vllm_wait_s`` for the server to list its model."""
    from transformers import AutoConfig

    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.serving.llamacpp import _eos_ids

    if llm.requested_dtype != "auto" or llm.requested_device not in ("auto", "cuda"):
        raise ValueError("--engine vllm: vLLM chooses the device and dtype (leave --device and --dtype at auto)")
    config = AutoConfig.from_pretrained(str(llm.model_dir), trust_remote_code=False)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{llm.model_dir}: --engine vllm serves decoder-only models; this one is seq2seq")
    llm.tokenizer, llm.seq2seq = load_tokenizer(llm.model_dir), False
    llm.eos_ids = _eos_ids(llm.model_dir, llm.tokenizer)
    llm.context_length = int(getattr(config, "max_position_embeddings", None) or llm.tokenizer.model_max_length)
    llm.vocab_size = int(getattr(config, "vocab_size", 0) or len(llm.tokenizer))
    llm.vllm_model = wait_for_upstream(llm.vllm_url, llm.vllm_wait_s)
    llm.device, llm.dtype_name = "vllm", f"vLLM at {llm.vllm_url}"


def wait_for_upstream(url: str, wait_s: float) -> str:
    """The model id the vLLM server at ``url`` lists, once it answers; RuntimeError after ``wait_s``."""
    import httpx

    deadline, last = time.monotonic() + wait_s, "no answer yet"
    while True:
        try:
            response = httpx.get(url.rstrip("/") + "/models", timeout=5)
            if response.status_code == 200 and response.json().get("data"):
                return response.json()["data"][0]["id"]
            last = f"HTTP {response.status_code}"
        except (httpx.HTTPError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"--engine vllm: no model listed at {url}/models within {wait_s:g} s ({last}); is "
                               "the vllm container running?")
        time.sleep(min(2.0, max(wait_s / 10, 0.05)))
