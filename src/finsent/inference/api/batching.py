"""Concurrent requests gathered into one model run, the run off the event loop, each answer to its own.

Each model run has a cost of its own (a hop to a thread, the tokenizer's and the runtime's calls, a
batch's matrix products that use the CPU's vector units better than one text's), shared by the texts of
a batch. Written here because the serving libraries that batch (Ray Serve, BentoML, Triton) each bring a
server of their own; this is a queue and one task.
"""

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class Overloaded(Exception):
    """More texts wait for the model than the queue holds, or the batcher is shutting down."""


@dataclass
class _Waiting:
    texts: list[str]
    arrived: float
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    """Runs `predict_proba` on the texts of the requests that arrive within `window_s` of the first
    waiting one, up to `max_batch` texts (a larger request runs alone), one run at a time in a thread.

    Requests waiting while a run goes on have waited long enough: the next run takes them at once.
    At most `max_queued` texts wait; `predict` refuses more with `Overloaded` rather than letting
    latency grow without bound.
    """

    def __init__(
        self,
        predict_proba: Callable[[list[str]], np.ndarray],
        window_s: float,
        max_batch: int,
        max_queued: int,
        on_batch: Callable[[int], None] = lambda texts: None,
    ):
        self.predict_proba = predict_proba
        self.window_s, self.max_batch, self.max_queued = window_s, max_batch, max_queued
        self.on_batch = on_batch
        self._waiting: deque[_Waiting] = deque()
        self._waiting_texts = 0
        self._arrival = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        """Refuse new requests, answer those waiting, then end."""
        self._closing = True
        self._arrival.set()
        if self._task is not None:
            await self._task

    @property
    def waiting_texts(self) -> int:
        return self._waiting_texts

    async def predict(self, texts: list[str]) -> np.ndarray:
        """Class probabilities of `texts`, shape (len(texts), len(LABELS)), in their order."""
        if self._closing or self._waiting_texts + len(texts) > self.max_queued:
            raise Overloaded
        waiting = _Waiting(texts, asyncio.get_running_loop().time())
        self._waiting.append(waiting)
        self._waiting_texts += len(texts)
        self._arrival.set()
        return await waiting.future

    async def _serve(self) -> None:
        while batch := await self._next_batch():
            await self._run(batch)

    async def _run(self, batch: list[_Waiting]) -> None:
        """One model run for the requests of `batch` still waiting (not cancelled meanwhile).

        When a run of several requests fails, each is run again alone: one input the model cannot
        take fails its own request only, with the model's exception.
        """
        batch = [waiting for waiting in batch if not waiting.future.done()]
        if not batch:
            return
        texts = [text for waiting in batch for text in waiting.texts]
        self.on_batch(len(texts))
        try:
            probabilities = await asyncio.to_thread(self.predict_proba, texts)
        except Exception as error:  # not swallowed: the request it belongs to fails with it
            if len(batch) > 1:
                for waiting in batch:
                    await self._run([waiting])
            elif not batch[0].future.done():  # done: its request was cancelled meanwhile
                batch[0].future.set_exception(error)
            return
        start = 0
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_result(probabilities[start : start + len(waiting.texts)])
            start += len(waiting.texts)

    async def _next_batch(self) -> list[_Waiting]:
        """The requests of the next run, oldest first; none once stopping with nothing waiting."""
        loop = asyncio.get_running_loop()
        while not self._waiting:
            if self._closing:
                return []
            self._arrival.clear()
            await self._arrival.wait()
        deadline = self._waiting[0].arrived + self.window_s
        while self._waiting_texts < self.max_batch and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrival.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._arrival.wait()
            except TimeoutError:
                break
        batch, size = [], 0
        while self._waiting and (not batch or size + len(self._waiting[0].texts) <= self.max_batch):
            batch.append(self._waiting.popleft())
            size += len(batch[-1].texts)
        self._waiting_texts -= size
        return batch
