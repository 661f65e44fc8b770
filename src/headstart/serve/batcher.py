"""Dynamic batching: inputs from concurrent requests share one model call, with a bounded wait.

The first input of a batch waits at most ``max_wait_ms`` for others to join, up to ``max_batch``
(TorchServe #1235: an unbounded or undocumented wait is added latency nobody asked for). While the
model runs, new inputs queue; the next batch starts as soon as it is free. The model runs in one
worker thread, so the event loop keeps accepting and decoding requests meanwhile.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass
class BatchStats:
    batches: int = 0
    inputs: int = 0
    largest: int = 0
    model_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "inputs": self.inputs, "largest_batch": self.largest,
                "mean_batch": round(self.inputs / self.batches, 2) if self.batches else 0.0,
                "model_seconds": round(self.model_seconds, 3)}


class DynamicBatcher:
    """``await batcher.submit(inputs)`` → their probabilities, computed together with other requests'."""

    def __init__(self, predict: Callable[[list], np.ndarray], *, max_batch: int, max_wait_ms: float):
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headstart-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="headstart-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop (graceful shutdown: requests in flight still get answers)."""
        if self._task is None:
            return
        await self._queue.put(None)
        await self._task
        self._task = None
        self._pool.shutdown(wait=True)

    async def submit(self, inputs: list) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            # Not started by a lifespan (an app mounted elsewhere, a test client per request): start here.
            await self.start()
        futures = [loop.create_future() for _ in inputs]
        for x, f in zip(inputs, futures):
            self._queue.put_nowait((x, f))
        return np.stack(await asyncio.gather(*futures))

    async def _loop(self) -> None:
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is None:
                break
            batch = [item]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            await self._run(batch)
        while not self._queue.empty():  # inputs that arrived with the stop signal still get answers
            rest = [i for i in (self._queue.get_nowait() for _ in range(self._queue.qsize())) if i is not None]
            for i in range(0, len(rest), self.max_batch):
                await self._run(rest[i:i + self.max_batch])

    async def _run(self, batch: list) -> None:
        live = [(x, f) for x, f in batch if not f.cancelled()]  # a client that gave up costs nothing
        if not live:
            return
        started = time.perf_counter()
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self._pool, self.predict, [x for x, _ in live])
        except Exception as exc:  # the model failed: every request in the batch hears about it
            for _, f in live:
                if not f.done():
                    f.set_exception(exc)
            return
        s = self.stats
        s.batches, s.inputs, s.largest = s.batches + 1, s.inputs + len(live), max(s.largest, len(live))
        s.model_seconds += time.perf_counter() - started
        for (_, f), p in zip(live, probs):
            if not f.done():
                f.set_result(p)
