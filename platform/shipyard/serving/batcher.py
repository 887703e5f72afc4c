"""Dynamic batching for the LLM runtime: a bounded queue, one batch at a time off the event loop.

A request waits at most ``max_wait_ms`` for others with the same generation settings (the batch
key: every setting but the prompt); up to ``max_batch_size`` of them run as one left-padded
``generate`` call, each sequence stopping on its own EOS or stop string. A request
with a ``seed`` runs alone, so its sample does not depend on its neighbours. The queue holds at
most ``max_queue`` requests: one more gets ``QueueFull`` (HTTP 429), never unbounded memory.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from shipyard.serving.metrics import BATCH_SIZE, QUEUE_DEPTH


class QueueFull(RuntimeError):
    """The runtime already holds ``max_queue`` requests."""


@dataclass
class _Item:
    prompt: str
    params: object  # SamplingParams
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, llm, max_batch_size: int = 8, max_wait_ms: float = 10.0, max_queue: int = 64):
        self.llm, self.max_batch_size, self.max_wait = llm, max_batch_size, max_wait_ms / 1000
        self.max_queue = max_queue
        self._pending: list[_Item] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return len(self._pending)

    @staticmethod
    def key(params) -> tuple:
        return ("seeded", id(params)) if params.seed is not None else params

    async def submit(self, prompt: str, params):
        """Queue one generation and wait for its ``Generation``; raises QueueFull when full."""
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"the runtime is at its queue limit ({self.max_queue} requests); retry later")
        item = _Item(prompt, params, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        QUEUE_DEPTH.set(len(self._pending))
        self._wakeup.set()
        try:
            return await item.future
        except asyncio.CancelledError:  # the client went away or timed out: drop it if not started
            if item in self._pending:
                self._pending.remove(item)
                QUEUE_DEPTH.set(len(self._pending))
            raise

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                first = self._pending[0]
                wait = self.max_wait - (time.perf_counter() - first.queued_at)
                if wait > 0 and len(self._pending) < self.max_batch_size:
                    await asyncio.sleep(wait)
                key = self.key(first.params)
                batch = [i for i in self._pending if self.key(i.params) == key][: self.max_batch_size]
                for item in batch:
                    self._pending.remove(item)
                batch = [i for i in batch if not i.future.done()]
                if not batch:
                    continue
                BATCH_SIZE.observe(len(batch))
                QUEUE_DEPTH.set(len(self._pending))
                try:
                    results = await asyncio.to_thread(self.llm.generate_batch, [i.prompt for i in batch],
                                                      [i.params for i in batch])
                except Exception as exc:  # handed to every waiter
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                for item, result in zip(batch, results, strict=True):
                    if not item.future.done():
                        item.future.set_result(result)
