"""Which adapters' heads are in memory: a byte budget, least-recently-used eviction, and
single-flight loading.

An :class:`~lastlayer.inference.Embedder` with ``adapter_memory`` *registers* adapters
(their metadata only) and keeps their heads (private top-k blocks) in a
:class:`HeadCache`: the first call that needs a head builds it, every other call that needs
it meanwhile waits for that one build (a hundred concurrent first requests load it once),
and when the heads' bytes would pass the budget the least recently used heads are dropped.
A head's bytes are counted from its tensors (:func:`head_bytes`): a merged LoRA or full
head owns k blocks of weights, an unmerged LoRA head only its LoRA matrices (it runs on
the base's own blocks); each head adds :data:`HEAD_OVERHEAD` for what is not a tensor's
data (its Python objects, the tensors' headers), which a thousand small heads make
tens of MB.

A call that is running keeps the heads it fetched, so an evicted head is freed when the
last call using it returns: memory may pass the budget by the heads of running calls.
What a running call gathers on top of the heads counts too (:meth:`HeadCache.hold`: a
batch whose rows go to several LoRA adapters copies each row's factors for the grouped
matmuls, tens of MB for a 64-text batch): least recently used heads make room for it
while it runs, so heads and the gathered factors together stay within the budget.

Without a budget (``None``) nothing is ever evicted: every head stays resident, as an
Embedder without ``adapter_memory`` keeps them.

Freed heads' memory goes back to the operating system: glibc keeps large freed blocks in
its heap for reuse (its mmap threshold rises to the largest block freed, and
:func:`lastlayer.core.allocator.keep_freed_memory` raises it further), so without
``malloc_trim`` a server that drops and rebuilds heads keeps far more than the budget.
The cache trims after an eviction, before the next build, at most every
:data:`TRIM_EVERY_S` seconds (:func:`~lastlayer.core.allocator.release_freed_memory`).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from lastlayer.core.allocator import release_freed_memory

__all__ = ["HEAD_OVERHEAD", "LOAD_BUCKETS", "HeadCache", "blocks_bytes", "head_bytes",
           "parse_memory", "storages"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)

TRIM_EVERY_S = 0.5
"""Least seconds between two trims of the heap (each walks all of it, so under heavy
eviction trimming at every build costs throughput; measured: docs/many-adapters.md)."""

HEAD_OVERHEAD = 40 * 2**10
"""Bytes a built head costs beyond its tensors' data: its modules, dictionaries and tensor
headers (measured in the process's resident memory, 300 unmerged MiniLM top-2 heads and
300 SmolLM2 top-4 ones built after their registration: 27-33 KiB each,
``python -m benchmarks.many_adapters --head-overhead 300``; docs/many-adapters.md)."""

LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the load-latency histogram (``lastlayer_adapter_load_seconds``)."""


def parse_memory(value: int | str | None) -> int | None:
    """``adapter_memory`` in bytes: an int, or ``"2GB"``, ``"512MB"``, ``"1.5GiB"``, ``"300kB"``
    (decimal kB/MB/GB/TB, binary KiB/MiB/GiB/TiB, case-insensitive); None stays None.

    Raises:
        ValueError: Not a size, or not positive.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"adapter_memory must be a number of bytes or a size such as '2GB', "
                         f"got {type(value).__name__}.")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value)
        unit = match.group(2).lower() if match else None
        if unit not in _UNITS:
            raise ValueError(f"adapter_memory={value!r} is not a size: write bytes or a number "
                             "with a unit, e.g. 2GB, 512MB, 1.5GiB.")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"adapter_memory must be positive, got {value!r}.")
    return size


def storages(tensors) -> dict[int, int]:
    """``{storage address: bytes}`` of the distinct storages behind ``tensors``."""
    found: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        found.setdefault(storage.data_ptr(), storage.nbytes())
    return found


def blocks_bytes(blocks, shared: set[int] | frozenset[int]) -> int:
    """The bytes ``blocks`` own: every parameter's and buffer's storage, counted once,
    except storages in ``shared`` (the base's, which PEFT's unmerged LoRA layers reuse)."""
    tensors = [t for block in blocks for t in (*block.parameters(), *block.buffers())]
    return sum(size for ptr, size in storages(tensors).items() if ptr not in shared)


def head_bytes(head, shared: set[int] | frozenset[int], packed_itemsize: int) -> int:
    """The bytes a head owns: its private blocks (:func:`blocks_bytes`), plus a LoRA
    adapter's factors and their copy packed in the compute dtype (``packed_itemsize`` bytes
    per element) for the grouped matmuls, plus :data:`HEAD_OVERHEAD`."""
    tensors = [] if head.lora is None else [t for pair in head.lora.factors.values()
                                            for t in pair]
    return (HEAD_OVERHEAD + blocks_bytes(head.blocks, shared) + sum(t.nbytes for t in tensors)
            + sum(t.numel() for t in tensors) * packed_itemsize)


class BudgetError(RuntimeError):
    """One head is larger than the whole budget."""


@dataclass
class _Resident:
    head: Any
    size: int


class HeadCache:
    """Resident heads by key, least recently used first, under a byte budget.

    Args:
        budget: Bytes the resident heads may use (None: no limit, nothing is evicted).
        build: ``key -> (head, bytes)``: builds a head (called outside the lock, once per
            key at a time).
        estimate: ``key -> bytes`` before building (room is made for it first, so the new
            head and the ones it replaces are not all in memory at once).
    """

    def __init__(self, budget: int | None, build: Callable[[Hashable], tuple[Any, int]],
                 estimate: Callable[[Hashable], int]) -> None:
        self.budget = budget
        self._build, self._estimate = build, estimate
        self._lock = threading.Lock()
        self._resident: collections.OrderedDict[Hashable, _Resident] = collections.OrderedDict()
        self._flight: dict[Hashable, Future] = {}
        self._dropped: set[Hashable] = set()  # forgotten while being built
        self.used = 0
        self.working = 0  # bytes running calls gather (hold), counted against the budget
        self.hits = self.misses = self.evictions = self.loads = self.failures = 0
        self._latencies: collections.deque[float] = collections.deque(maxlen=4096)
        self._buckets = [0] * (len(LOAD_BUCKETS) + 1)  # the last: +Inf
        self._load_sum = 0.0
        self._trimmed = -float("inf")  # when the heap was last trimmed

    # -----------------------------------------------------------------------------------
    # Heads.

    def peek(self, key: Hashable) -> Any | None:
        """The head of ``key`` if it is resident (a hit, made most recent), else None."""
        with self._lock:
            entry = self._resident.get(key)
            if entry is None:
                return None
            self._resident.move_to_end(key)
            self.hits += 1
            return entry.head

    def get(self, key: Hashable) -> Any:
        """The head of ``key``: resident, or built now (one build however many callers wait).

        Raises:
            Exception: Whatever the build raised (every caller waiting on it gets it; the
                next call tries again).
        """
        with self._lock:
            entry = self._resident.get(key)
            if entry is not None:
                self._resident.move_to_end(key)
                self.hits += 1
                return entry.head
            self.misses += 1
            future = self._flight.get(key)
            leader = future is None
            if leader:
                future = self._flight[key] = Future()
        if not leader:
            return future.result()
        try:
            head = self._load(key)
        except BaseException as err:
            future.set_exception(err)
            raise
        finally:
            with self._lock:
                self._flight.pop(key, None)
        future.set_result(head)
        return head

    def _load(self, key: Hashable) -> Any:
        estimate = self._estimate(key)
        if self.budget is not None and estimate > self.budget:
            with self._lock:
                self.failures += 1
            raise BudgetError(f"its head needs about {estimate / 2**20:.1f} MiB, more than the "
                              f"whole adapter memory ({self.budget / 2**20:.1f} MiB): raise "
                              "adapter_memory.")
        self._make_room(estimate)
        start = time.perf_counter()
        try:
            head, size = self._build(key)
        except BaseException:
            with self._lock:
                self.failures += 1
            raise
        seconds = time.perf_counter() - start
        with self._lock:
            self.loads += 1
            self._latencies.append(seconds)
            self._buckets[bisect.bisect_left(LOAD_BUCKETS, seconds)] += 1
            self._load_sum += seconds
            if key in self._dropped:  # forgotten meanwhile: serve this call, keep nothing
                self._dropped.discard(key)
                return head
            self._resident[key] = _Resident(head, size)
            self.used += size
            self._evict_for(0, keep=key)
        return head

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Count ``nbytes`` that a running call allocates beside the heads (a mixed batch's
        gathered LoRA factors) against the budget while the ``with`` block runs: least
        recently used heads are dropped to make room, as for a head being built."""
        if self.budget is None or nbytes <= 0:
            yield
            return
        with self._lock:
            self.working += nbytes
        try:
            self._make_room(0)
            yield
        finally:
            with self._lock:
                self.working -= nbytes

    def _make_room(self, incoming: int) -> None:
        """Drop least recently used heads until ``incoming`` more bytes fit, and give the
        dropped heads' memory back to the system before it is allocated again (at most
        every :data:`TRIM_EVERY_S`)."""
        with self._lock:
            trim = (self._evict_for(incoming)
                    and time.monotonic() - self._trimmed >= TRIM_EVERY_S)
            if trim:
                self._trimmed = time.monotonic()
        if trim:
            release_freed_memory()

    def _evict_for(self, incoming: int, keep: Hashable = None) -> bool:
        """Drop least recently used heads (never ``keep``) until ``incoming`` more bytes fit
        beside the resident heads and what running calls hold; whether any was dropped.
        Holds the lock."""
        before = self.evictions
        if self.budget is None:
            return False
        for key in list(self._resident):
            if self.used + self.working + incoming <= self.budget:
                break
            if key == keep:
                continue
            self.used -= self._resident.pop(key).size
            self.evictions += 1
        return self.evictions > before

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s head (unloaded): not counted as an eviction."""
        with self._lock:
            entry = self._resident.pop(key, None)
            if entry is not None:
                self.used -= entry.size
            if key in self._flight:
                self._dropped.add(key)

    def resident(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._resident

    def order(self) -> list[Hashable]:
        """The resident keys, least recently used first."""
        with self._lock:
            return list(self._resident)

    # -----------------------------------------------------------------------------------
    # Numbers.

    def stats(self) -> dict[str, Any]:
        """Counters and sizes (see :meth:`lastlayer.inference.Embedder.stats`)."""
        with self._lock:
            latencies = sorted(self._latencies)
            stats = {"resident": len(self._resident), "bytes_used": self.used,
                     "working_bytes": self.working,
                     "budget": self.budget, "hits": self.hits, "misses": self.misses,
                     "evictions": self.evictions, "loads": self.loads,
                     "load_failures": self.failures, "loading": len(self._flight),
                     "load_buckets": list(zip((*LOAD_BUCKETS, float("inf")),
                                              self._cumulative(), strict=True)),
                     "load_seconds_sum": self._load_sum}
        stats["load_seconds"] = _summary(latencies)
        return stats

    def _cumulative(self) -> list[int]:
        total, out = 0, []
        for count in self._buckets:
            total += count
            out.append(total)
        return out


def _summary(values: list[float]) -> dict[str, float | int]:
    """Count, mean, p50, p99 and max of sorted ``values`` (the last 4,096 loads)."""
    if not values:
        return {"count": 0, "mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}

    def pick(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {"count": len(values), "mean": sum(values) / len(values), "p50": pick(0.5),
            "p99": pick(0.99), "max": values[-1]}
