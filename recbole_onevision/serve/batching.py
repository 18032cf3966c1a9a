"""Micro-batching: concurrent requests answered by one batched model call.

Requests wait in a queue; a worker takes up to ``max_batch`` of them, or what came within
``max_wait_ms`` of the first, and answers them with one :meth:`Searcher.search_batch`, on a
thread of its own so the event loop keeps accepting requests. ``max_batch`` 1 is batching off:
each request is its own model call, in arrival order. A batch that fails on one query's input
(an undecodable image) is answered query by query, so a bad request never fails its neighbours.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from recbole_onevision.search import Answer, Query, Searcher, SearchError


@dataclass(frozen=True)
class Batching:
    max_batch: int = 16  # requests per model call (1: batching off)
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company

    def __post_init__(self):
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"batch size: expected an integer >= 1, got {self.max_batch!r}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"batch wait: expected milliseconds >= 0, got {self.max_wait_ms!r}")


@dataclass
class Served:
    answer: Answer | None
    error: SearchError | None
    batch: int  # requests answered by the same model call
    model_ms: float  # that call's time
    queued_ms: float  # from arrival to the call's start


class MicroBatcher:
    def __init__(self, searcher: Searcher, batching: Batching):
        self.searcher, self.batching = searcher, batching
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search")

    async def submit(self, query: Query) -> Served:
        if self._worker is None:  # started in the serving loop, on first use
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((query, future, time.perf_counter()))
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.batching.max_wait_ms / 1e3
            while len(batch) < self.batching.max_batch:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(deadline - loop.time(), 0)))
                except asyncio.TimeoutError:
                    break
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._answer, [q for q, _, _ in batch])
            except Exception as err:  # noqa: BLE001 (an unexpected failure reaches every waiter, not the loop)
                results = [err] * len(batch)
            model_ms = 1e3 * (time.perf_counter() - start)
            for (_, future, arrived), result in zip(batch, results):
                if future.done():  # the client went away
                    continue
                if isinstance(result, Exception) and not isinstance(result, SearchError):
                    future.set_exception(result)
                    continue
                error = result if isinstance(result, SearchError) else None
                future.set_result(Served(None if error else result, error, len(batch), model_ms,
                                         1e3 * (start - arrived)))

    def _answer(self, queries: list[Query]) -> list:
        try:
            return self.searcher.search_batch(queries)
        except SearchError as err:
            if len(queries) == 1:
                return [err]
        out = []
        for query in queries:  # one bad query: the others still get their answers
            try:
                out.append(self.searcher.search_batch([query])[0])
            except SearchError as err:
                out.append(err)
        return out
