"""The scheduler of every engine: one thread owns the model and decodes every running request, one token per step.

    engine = Engine(model, tokenizer, device, max_batch_size=8, max_queue=64); engine.start()
    engine.submit(Job(prompt_ids, SamplingParams(16), sink))   # sink(kind, payload) per event

Scheduling is per iteration: a request that arrives while others decode is prefilled and joins the
running batch at the next step (``kv.CausalBatch.join``); a finished or cancelled row leaves it at once.
An idle engine starts a lone request immediately (no batching wait). The forward pass is a batch
object's: ``kv.CausalBatch``/``kv.Seq2SeqBatch`` for transformers, ``serving.llamacpp.LlamaBatch`` for
llama.cpp. Admission is first come, first served, and a batch holds one adapter at a time: the oldest
waiting request's adapter is the next batch's once the running rows finish. ``max_queue`` bounds the
requests waiting (``QueueFull``, HTTP 429).

Each row samples with its own settings and, when seeded, its own RNG (``sampling``). Events go to the
job's ``sink`` from the engine thread: ``("delta", (text, TokenLogprob | None))`` per token (text that
could begin a stop string is held back until it cannot), then ``("done", Generation)`` or
``("error", exception)``. A job's ``cancel`` event (client gone) or ``deadline`` (monotonic seconds)
ends it at the next step: cancelled jobs get no event, timed-out ones ``("error", TimeoutError)``.
"""

from __future__ import annotations

import collections
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from shipyard.serving.params import Generation, SamplingParams, TokenLogprob


class QueueFull(RuntimeError):
    """The engine already holds ``max_queue`` waiting requests."""


class EngineUnavailable(RuntimeError):
    """The engine cannot generate now (a remote engine is down or failing): HTTP 503."""


@dataclass
class Job:
    prompt: list[int]
    params: SamplingParams
    sink: object  # callable(kind: str, payload) — called from the engine thread
    cancel: threading.Event = field(default_factory=threading.Event)
    deadline: float | None = None  # time.monotonic() after which the job fails with TimeoutError


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    hits = [text.index(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` might start a stop string (not safe to stream yet)."""
    keep = 1 if text.endswith("\ufffd") else 0  # a character whose bytes are not all decoded yet
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return keep


class _Row:
    """One running job: its tokens so far, the text sent, and when it is finished."""

    def __init__(self, job: Job, engine: Engine, prompt_logprobs: list[TokenLogprob] | None):
        import torch

        from shipyard.serving.sampling import generator_for

        self.job, self.engine, self.p = job, engine, job.params
        self.prompt_t = torch.tensor(job.prompt, device=engine.device)
        self.generator = generator_for(self.p.seed if self.p.temperature > 0 else None, engine.device)
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if self.p.logprobs is not None else None
        self.prompt_logprobs = prompt_logprobs
        self.sent, self.finish = 0, None
        try:
            self.constraint = engine.constraint(self.p.grammar) if self.p.grammar else None
        except ValueError as exc:  # this row fails alone (the API checked the grammar, so this is rare)
            self.constraint, self.finish = None, "error"
            job.sink("error", exc)
        if self.p.max_tokens == 0:
            self.finish = "length"

    @property
    def last(self) -> int:
        return self.tokens[-1]

    def advance(self, logits) -> None:
        """Choose the next token from ``logits`` [vocab], send what is safe, note whether the row ended."""
        import torch

        from shipyard.serving.sampling import choose, logprobs_of

        p = self.p
        generated = torch.tensor(self.tokens, dtype=torch.long, device=logits.device)
        scores = self.constraint.masked(logits) if self.constraint else logits
        pick = choose(scores, p, self.prompt_t, generated, self.generator, p.logprobs or 0)
        if self.constraint and self.logprobs is not None:  # log-probs stay the model's own, as without a format
            pick = logprobs_of(logits, pick.token, p.logprobs or 0)
        complete = self.constraint.accept(pick.token) if self.constraint else False
        self.tokens.append(pick.token)
        entry = TokenLogprob(pick.token, pick.logprob, pick.top) if self.logprobs is not None else None
        if entry is not None:
            self.logprobs.append(entry)
        text, stopped = cut_at_stop(self.engine.decode(self.tokens), p.stop)
        if stopped or complete or pick.token in self.engine.eos_ids:
            self.finish = "stop"
        elif len(self.tokens) >= p.max_tokens:
            self.finish = "length"
        safe = len(text) if self.finish else len(text) - held_back(text, p.stop)
        delta = text[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        self.job.sink("delta", (delta, entry))
        if self.finish:
            self.job.sink("done", self.result(text))

    def result(self, text: str) -> Generation:
        return Generation(text, len(self.job.prompt), len(self.tokens), self.finish, self.tokens, self.logprobs,
                          self.prompt_logprobs, self.job.prompt)

    def expired(self) -> bool:
        """Cancelled (no event) or past its deadline (a TimeoutError event): the row leaves now."""
        return was_cancelled(self.job) or past_deadline(self.job, "generation passed the request's deadline")


class Engine:
    """``model`` is a transformers model, or None with ``new_batch`` (a callable returning an empty batch of
    another engine's, e.g. ``lambda: serving.llamacpp.LlamaBatch(runtime)``) and ``eos_ids``."""

    def __init__(self, model, tokenizer, device, *, seq2seq: bool = False, variant=None, max_batch_size: int = 8,
                 max_queue: int = 64, new_batch=None, eos_ids: set[int] | None = None):
        self.model, self.tokenizer, self.device, self.seq2seq = model, tokenizer, device, seq2seq
        self.variant = variant or (lambda adapter: nullcontext())
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.eos_ids = eos_ids if eos_ids is not None else _eos_ids(model, tokenizer)
        self.new_batch = new_batch or self._transformers_batch
        self.keep_logits = new_batch is None and _takes_logits_to_keep(model)
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._rows: list[_Row] = []
        self._batch = None
        self._closed = False
        self._tokenizers = None
        self._thread = threading.Thread(target=self._loop, name="shipyard-engine", daemon=True)

    def start(self) -> Engine:
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=60)  # the step in flight ends before the model is let go

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        return len(self._rows)

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises QueueFull when ``max_queue`` jobs already wait."""
        from shipyard.serving.metrics import QUEUE_DEPTH

        with self._cv:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"the runtime is at its queue limit ({self.max_queue} requests); retry later")
            self._pending.append(job)
            QUEUE_DEPTH.set(len(self._pending))
            self._cv.notify()

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def constraint(self, grammar: str):
        """A row's response_format state (``serving.constrain``), over this engine's tokenizer."""
        from shipyard.serving.constrain import Constraint, Tokenizers

        if self._tokenizers is None:
            self._tokenizers = Tokenizers()
        return Constraint(grammar, self._tokenizers.get(self.tokenizer, self.eos_ids))

    def _loop(self) -> None:
        import torch

        while True:
            with self._cv:
                while not self._pending and not self._rows and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
            with torch.inference_mode():
                try:
                    self._admit()
                    if self._rows:
                        self._step()
                except Exception as exc:  # a failed forward fails the running rows, never the engine
                    for row in self._rows:
                        row.job.sink("error", exc)
                    self._rows = []
                    self._discard()

    def _take(self) -> list[Job]:
        """The waiting jobs that join now: first come first served, one adapter per batch."""
        from shipyard.serving.metrics import QUEUE_DEPTH

        room = self.max_batch_size - len(self._rows)
        if room <= 0 or (self._rows and not self._batch.joinable):
            return []
        taken: list[Job] = []
        with self._cv:
            while self._pending and len(taken) < room:
                job = self._pending[0]
                if was_cancelled(job) or past_deadline(job, "the request waited past its deadline"):
                    self._pending.popleft()
                    continue
                ref = self._rows[0].p if self._rows else (taken[0].params if taken else job.params)
                if job.params.adapter != ref.adapter:
                    break
                taken.append(self._pending.popleft())
            QUEUE_DEPTH.set(len(self._pending))
        return taken

    def _admit(self) -> None:
        """Prefill the jobs that join now (a scored prompt alone, the rest together) and add them to the batch."""
        jobs = self._take()
        scored = [[j] for j in jobs if j.params.prompt_logprobs and not self.seq2seq]
        groups = scored + ([plain] if (plain := [j for j in jobs if not j.params.prompt_logprobs or self.seq2seq])
                           else [])
        for n, group in enumerate(groups):
            if self._batch is not None and not self._batch.joinable:  # e.g. a sliding-window cache: wait
                with self._cv:
                    self._pending.extendleft(reversed([j for g in groups[n:] for j in g]))
                break
            with self.variant(group[0].params.adapter):
                batch, logits, prompt_lps = self._prefill(group)
            rows = [_Row(j, self, lp) for j, lp in zip(group, prompt_lps, strict=True)]
            self._grow(batch, rows)
            for i, row in enumerate(rows):
                if row.finish is None:
                    row.advance(logits[i])
                elif row.finish != "error":  # max_tokens 0: the prompt scored, nothing generated
                    row.job.sink("done", row.result(""))
            self._drop_finished()

    def _transformers_batch(self):
        from shipyard.serving.kv import CausalBatch, Seq2SeqBatch

        return (Seq2SeqBatch if self.seq2seq else CausalBatch)(self.model, self.device, self.keep_logits)

    def _prefill(self, group: list[Job]):
        batch = self.new_batch()
        try:
            if group[0].params.prompt_logprobs and not self.seq2seq:
                logits, scored = self._prefill_scored(batch, group[0])
                return batch, logits, [scored]
            return batch, batch.prefill([j.prompt for j in group]), [None] * len(group)
        except Exception:
            _close(batch)
            raise

    def _discard(self) -> None:
        """The running batch is gone (its rows finished or failed): what it holds is released."""
        if self._batch is not None:
            _close(self._batch)
        self._batch = None

    def _prefill_scored(self, batch, job: Job):
        """Prefill one row in chunks, scoring its prompt's tokens (echo): (next-token logits, prompt logprobs)."""
        import torch

        top = job.params.logprobs or 0
        scored = [TokenLogprob(job.prompt[0], None, [])]

        def on_logits(start: int, logits) -> None:
            logp = torch.log_softmax(logits.float(), dim=-1)
            nxt = job.prompt[start + 1:start + 1 + logp.shape[0]]
            best = torch.topk(logp[: len(nxt)], top) if top else None
            for i, tok in enumerate(nxt):
                pairs = list(zip(best.indices[i].tolist(), best.values[i].tolist(), strict=True)) if top else []
                scored.append(TokenLogprob(tok, float(logp[i, tok]), pairs))

        return batch.prefill_scored(job.prompt, on_logits), scored

    def _grow(self, batch, rows: list[_Row]) -> None:
        if self._batch is None or not self._rows:
            self._discard()
            self._batch = batch
        else:
            self._batch.join(batch)
        self._rows.extend(rows)

    def _step(self) -> None:
        from shipyard.serving.metrics import BATCH_SIZE, RUNNING

        self._drop([i for i, r in enumerate(self._rows) if r.expired()])
        RUNNING.set(len(self._rows))
        if not self._rows:
            return
        BATCH_SIZE.observe(len(self._rows))
        with self.variant(self._rows[0].p.adapter):
            logits = self._batch.step([r.last for r in self._rows])
        for row, row_logits in zip(self._rows, logits, strict=True):
            row.advance(row_logits)
        self._drop_finished()

    def _drop_finished(self) -> None:
        self._drop([i for i, r in enumerate(self._rows) if r.finish])

    def _drop(self, gone: list[int]) -> None:
        if not gone:
            return
        from shipyard.serving.metrics import RUNNING

        keep = [i for i in range(len(self._rows)) if i not in set(gone)]
        self._rows = [self._rows[i] for i in keep]
        RUNNING.set(len(keep))
        if not keep:
            self._discard()
        else:
            self._batch.keep(keep)


def _close(batch) -> None:
    close = getattr(batch, "close", None)
    if close is not None:
        close()


def was_cancelled(job: Job) -> bool:
    """The job's client went away (counted in /metrics); it leaves without an event."""
    if job.cancel.is_set():
        from shipyard.serving.metrics import CANCELLED

        CANCELLED.inc()
        return True
    return False


def past_deadline(job: Job, message: str) -> bool:
    """Past its deadline: the job is told so (a TimeoutError event) and leaves."""
    if job.deadline is not None and time.monotonic() > job.deadline:
        job.sink("error", TimeoutError(message))
        return True
    return False


def _takes_logits_to_keep(model) -> bool:
    """Asked once per engine: a LoRA (peft) wrapper passes ``logits_to_keep`` on to the model it wraps."""
    from shipyard.models.inference import takes_logits_to_keep

    return takes_logits_to_keep(model.get_base_model() if hasattr(model, "get_base_model") else model)


def _eos_ids(model, tokenizer) -> set[int]:
    return eos_ids_of(tokenizer, getattr(model, "generation_config", None))


def eos_ids_of(tokenizer, generation_config) -> set[int]:
    """The tokenizer's EOS and the generation config's (a chat model may end turns with another token)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(generation_config, "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ids
