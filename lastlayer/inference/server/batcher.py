"""Batching across requests: concurrent requests, whatever their adapters, run as one batch.

Requests arriving within ``batch_window_ms`` are gathered and run through one
``Embedder.encode(texts, adapter=[one name per row])`` call in a worker thread, so rows for
different adapters share the base's bottom blocks and the event loop never waits on the
model. ``workers`` (2) batches run at once, each worker on its share of torch's CPU threads
(on 2 cores: one each), so one batch's single-threaded steps (tokenizing, Python between
kernels, pooling) overlap the other's kernels: 1.07-1.19x the texts/s of one batch at a time
on both threads, at fewer CPU seconds per text (docs/serve.md, Batching). A batch that
starts while no other runs and nothing waits takes all the threads (at low load there is
nothing to overlap with: one client on a 2-core Zen 4, 1.3-1.7x the texts/s of one thread).
The window is only
for a request that finds a worker free: requests that queued while the workers were busy
start the next batch as soon as one comes back, before that batch's answers are written,
and with several workers a batch takes at most an equal share of the queue (never less than
one forward pass), so the workers that come back next find work of their own.
Each request is checked first (an adapter that is not loaded, routing without signatures),
so a bad one fails alone without being encoded. Past ``max_queue`` texts a new request is
refused with 429 (:class:`~lastlayer.inference.server.errors.QueueFullError`) before it is
queued: an accepted request is always answered.

Each named-adapter request fetches its heads before it joins a batch: resident heads at
once (on the event loop: a dictionary lookup), cold ones in a loader thread pool of their
own (one build per adapter however many requests wait for it), so a cold load never holds
up the batches of hot adapters, and the batch itself never builds a head. A head that
cannot be built fails only the requests that need it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lastlayer.config.commands import CPU_ENCODE_BATCH, GPU_ENCODE_BATCH, ServeSettings
from lastlayer.inference.embedder import AUTO, Embedder
from lastlayer.inference.server.errors import APIError, QueueFullError, for_exception, server_error
from lastlayer.inference.server.metrics import Metrics

log = logging.getLogger(__package__)

LOADERS = 2  # threads building cold heads (each build holds the GIL part of the time)


@dataclass
class _Job:
    """One request's texts: ``keys`` holds one adapter (or None) per text; None: routed."""

    texts: list[str]
    keys: list[str | None] | None
    future: asyncio.Future
    heads: dict[str, Any] = field(default_factory=dict)  # fetched before the batch
    queued: float = 0.0  # the event loop's clock when it joined the queue


class Batcher:
    """Gathers concurrent requests into batches and runs each in a worker thread.

    Up to ``settings.workers`` batches run at once; while they run the next one gathers, so
    a busy server makes large batches and an idle one answers after ``window`` seconds.
    """

    def __init__(self, embedder: Embedder, settings: ServeSettings, metrics: Metrics) -> None:
        self.embedder = embedder
        self.settings = settings
        self.metrics = metrics
        self.encode_batch_size = encode_batch_size(settings, getattr(embedder, "device", None))
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None  # the workers: made by start()
        self._threads: int | None = None  # torch's threads before start() shared them out
        self._share: int | None = None  # a worker's threads while other batches run
        self._busy = 0  # batches in the workers now
        self._busy_lock = threading.Lock()
        self._loader = ThreadPoolExecutor(max_workers=LOADERS, thread_name_prefix="lastlayer-load")
        self._loading: dict[str, asyncio.Future] = {}  # cold adapters being built
        self._free_at = -math.inf  # when the last batch came back (the model went idle)
        self._running: dict[asyncio.Task, list[_Job]] = {}  # the batches in the workers

    def start(self) -> None:
        workers, share = self.settings.workers, None
        device = getattr(self.embedder, "device", None)  # a stand-in embedder has none
        if workers > 1 and device is not None and device.type == "cpu":
            self._threads = torch.get_num_threads()
            share = self._share = max(1, self._threads // workers)
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="lastlayer-embed",
            initializer=None if share is None else _own_threads,
            initargs=() if share is None else (share,))
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="lastlayer-batcher")

    async def stop(self) -> None:
        if self._task is not None:  # first: no batch starts after this
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left = [job for jobs in self._running.values() for job in jobs]
        for task in list(self._running):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for job in [*left, *self._jobs]:  # nobody else will answer them now
            if not job.future.done():
                job.future.set_exception(APIError(503, "the server is shutting down.",
                                                  "server_error", code="shutting_down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._loader.shutdown(wait=True, cancel_futures=True)
        if self._threads is not None:  # the process' default, as it was
            torch.set_num_threads(self._threads)

    async def submit(self, texts: list[str], keys: list[str | None] | None
                     ) -> tuple[np.ndarray, list[int]]:
        """Queue a request; return its vectors and its token counts.

        Raises:
            QueueFullError: Too many texts are waiting already.
        """
        limit = self.settings.max_queue
        if self._queued + len(texts) > limit:
            raise QueueFullError(self._queued, limit)
        self._queued += len(texts)  # a request waiting for a cold head counts too
        self.metrics.queue.set(self._queued)
        try:
            heads = await self._fetch(keys)
        except BaseException as err:
            self._queued -= len(texts)
            self.metrics.queue.set(self._queued)
            if isinstance(err, Exception):
                raise for_exception(err) from err
            raise
        loop = asyncio.get_running_loop()
        job = _Job(texts, keys, loop.create_future(), heads, loop.time())
        self._jobs.append(job)
        self._wake.set()
        return await job.future

    async def _fetch(self, keys: list[str | None] | None) -> dict[str, Any]:
        """The heads of the adapters ``keys`` names: resident ones at once, cold ones built
        in the loader pool (one build per adapter at a time). Routed requests: none (the
        batch fetches the heads routing picks)."""
        names = [] if keys is None else [n for n in dict.fromkeys(keys) if n is not None]
        if not names:
            return {}
        heads = self.embedder.resident(names)
        if heads is not None:
            return heads
        loop = asyncio.get_running_loop()
        waits = {}
        for name in names:
            waiting = self._loading.get(name)
            if waiting is None:
                waiting = self._loading[name] = asyncio.ensure_future(
                    loop.run_in_executor(self._loader, self.embedder.warm, [name]))
                waiting.add_done_callback(lambda _, n=name: self._loading.pop(n, None))
            waits[name] = waiting
        heads = {}
        for waiting in waits.values():
            heads.update(await asyncio.shield(waiting))
        return heads

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        free = asyncio.Semaphore(self.settings.workers)
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._jobs:
                continue
            await free.acquire()  # a worker is free
            # the oldest job came to a free worker: gather others for a window; one that
            # waited for a worker starts at once with what queued meanwhile
            idle = self._jobs[0].queued > self._free_at
            if idle and self._queued < self.settings.max_batch and self.settings.batch_window_ms:
                await asyncio.sleep(self.settings.batch_window_ms / 1000)
            jobs = self._take()
            if self._jobs:
                self._wake.set()  # leftovers form the next batch
            work = loop.run_in_executor(self._executor, self._embed, jobs)  # starts now
            self._running[asyncio.create_task(self._finish(jobs, work, free))] = jobs

    async def _finish(self, jobs: list[_Job], work: asyncio.Future,
                      free: asyncio.Semaphore) -> None:
        """Wait for a batch, free its worker, then answer its jobs."""
        try:
            results = await work
        except Exception as err:  # never leave requests waiting, never stop batching
            log.exception("batch failed")
            results = [server_error(err)] * len(jobs)
        self._free_at = asyncio.get_running_loop().time()
        self._running.pop(asyncio.current_task(), None)
        free.release()  # first: the next batch starts before these answers are written
        _answer(jobs, results)

    def _take(self) -> list[_Job]:
        """The oldest jobs, up to :meth:`_limit` texts (at least one job)."""
        limit = self._limit()
        jobs, size = [], 0
        while self._jobs and (not jobs or size + len(self._jobs[0].texts) <= limit):
            job = self._jobs.popleft()
            jobs.append(job)
            size += len(job.texts)
        self._queued -= size
        self.metrics.queue.set(self._queued)
        self.metrics.batch.observe(size)
        return jobs

    def _limit(self) -> int:
        """The most texts the next batch takes: ``max_batch``; with several workers, no more
        than an equal share of the queue per worker, and never less than one forward pass
        (:attr:`encode_batch_size`). A worker that comes back while the others are busy would
        otherwise take everything queued and leave them idle when they return, its batch
        (and the latency of every request in it) twice as long as it needs to be."""
        settings = self.settings
        if settings.workers < 2:
            return settings.max_batch
        share = math.ceil(self._queued / settings.workers)
        return min(settings.max_batch, max(self.encode_batch_size, share))

    def _embed(self, jobs: list[_Job]) -> list[Any]:
        """Worker thread: the results of ``jobs``, in order (vectors and tokens, or an
        :class:`APIError`).

        Each job is first checked alone, without encoding anything (an adapter that is not
        loaded, routing without signatures): such a job gets its error and stays out of the
        batch. The others run in one encode call for the named-adapter jobs and one for the
        routed ones; a call that still fails (an adapter unloaded meanwhile, a crash) is
        run again job by job, and a job that fails alone gets that very error. No job is
        encoded more than twice.
        """
        with self._threads_for_batch():
            return self._embed_jobs(jobs)

    @contextlib.contextmanager
    def _threads_for_batch(self) -> Iterator[None]:
        """Worker thread, around one batch: its torch threads are all of them when no other
        batch runs, its share otherwise (decided as the batch starts; on the CPU with
        several workers only)."""
        with self._busy_lock:
            self._busy += 1
            alone = self._busy == 1 and not self._queued  # nothing waits to join it
        try:
            if self._share is not None:
                torch.set_num_threads(self._threads if alone else self._share)
            yield
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _embed_jobs(self, jobs: list[_Job]) -> list[Any]:
        """:meth:`_embed`'s work, on the threads it was given."""
        results: list[Any] = [None] * len(jobs)
        for i, job in enumerate(jobs):
            try:
                self.embedder.check_request(AUTO if job.keys is None else job.keys,
                                            len(job.texts))
            except Exception as err:
                results[i] = for_exception(err)
        for routed in (False, True):
            group = [i for i, job in enumerate(jobs)
                     if results[i] is None and (job.keys is None) == routed]
            if not group:
                continue
            try:
                outs = self._encode([jobs[i] for i in group], routed)
            except Exception as err:
                outs = ([for_exception(err)] if len(group) == 1
                        else [self._alone(jobs[i], routed) for i in group])
            for i, out in zip(group, outs, strict=True):
                results[i] = out
        return results

    def _alone(self, job: _Job, routed: bool) -> tuple[np.ndarray, list[int]] | APIError:
        """One job encoded on its own: its vectors and tokens, or its error."""
        try:
            return self._encode([job], routed)[0]
        except Exception as err:
            return for_exception(err)

    def _encode(self, jobs: list[_Job], routed: bool) -> list[tuple[np.ndarray, list[int]]]:
        """One encode call for ``jobs``: each job's vectors and token counts (a routed row's
        tokens are counted at its routed adapter's limit)."""
        texts = [text for job in jobs for text in job.texts]
        adapter = AUTO if routed else [key for job in jobs for key in job.keys]
        heads = {name: head for job in jobs for name, head in job.heads.items()}
        result = self.embedder.encode(texts, adapter=adapter,
                                      batch_size=self.encode_batch_size,
                                      progress=False, heads=heads)
        tokens = result.tokens.tolist()
        outs, start = [], 0
        for job in jobs:
            end = start + len(job.texts)
            outs.append((result.vectors[start:end], tokens[start:end]))
            start = end
        return outs


def encode_batch_size(settings: ServeSettings, device: torch.device | None) -> int:
    """Texts per forward pass: ``settings.encode_batch_size``, or by device where it is None
    (16 on the CPU and for a stand-in embedder without a device, 64 on a GPU)."""
    if settings.encode_batch_size is not None:
        return settings.encode_batch_size
    return GPU_ENCODE_BATCH if device is not None and device.type != "cpu" else CPU_ENCODE_BATCH


def _own_threads(n: int) -> None:
    """A worker thread's start: its torch ops run on ``n`` threads of their own (torch
    keeps the count per thread once a thread has used it; asking first fixes that)."""
    torch.get_num_threads()
    torch.set_num_threads(n)


def _answer(jobs: list[_Job], results: list[Any]) -> None:
    """Resolve each job's future with its result (an exception: raised in its handler)."""
    for job, result in zip(jobs, results, strict=True):
        if job.future.done():  # the client went away
            continue
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)
