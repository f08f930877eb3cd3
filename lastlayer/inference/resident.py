"""The ``Embedder``'s side of the memory budget: which heads are resident, building them, the
merged / unmerged rule, and the numbers (``stats``).

:class:`ResidentHeads` is a part of :class:`lastlayer.inference.Embedder` (its base class),
kept here so that the registry (``embedder``) stays about registration and calls: it holds
the methods that go through the :class:`~lastlayer.inference.residency.HeadCache` (the
budget, LRU eviction, single-flight builds). See docs/many-adapters.md.

The rule: a LoRA head is merged while the budget holds every registered adapter merged,
else unmerged (its factors alone on the base's blocks: 17-23x smaller, 20-23x faster to
build); the full kind is always merged;
an explicit ``merge`` wins; a quantized base is always unmerged. The form is fixed at an
adapter's first build, so a head dropped and built again gives bit-identical vectors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lastlayer import artifact
from lastlayer.core.engine import Head
from lastlayer.core.grouped import compute_dtype
from lastlayer.core.kinds import kind_named
from lastlayer.inference.residency import HEAD_OVERHEAD, blocks_bytes, head_bytes, storages

_Loaded = Any  # lastlayer.inference.embedder._Loaded (not imported: that module imports this)

__all__ = ["AdapterLoadError", "ResidentHeads"]


class AdapterLoadError(RuntimeError):
    """A registered adapter's head cannot be built now (a file gone or damaged since it was
    registered, or larger than ``adapter_memory``): only the calls that need it fail."""


class ResidentHeads:
    """The residency methods of the :class:`~lastlayer.inference.Embedder` (its state is
    set up by ``Embedder.__init__``: ``_cache``, ``_forms``, ``_by_key``, ...)."""

    def stats(self) -> dict[str, Any]:
        """How the adapters' heads use memory, and how often calls found them resident.

        Returns:
            ``registered``, ``resident`` (heads in memory), ``bytes_used`` (their tensors'
            bytes), ``working_bytes`` (what running mixed batches gather for their rows'
            LoRA factors, counted against the budget with the heads), ``budget``
            (``adapter_memory``; None), ``hits`` / ``misses`` (an adapter a call needed
            was resident / had to be built), ``evictions``,
            ``loads``, ``load_failures``, ``loading`` (builds running now), ``merged`` and
            ``unmerged`` (resident heads of each form), ``hit_rate``, ``load_seconds``
            (count, mean, p50, p99, max of the last 4,096 builds), plus the load-latency
            histogram (``load_buckets``: cumulative ``(upper bound, count)``,
            ``load_seconds_sum``) for Prometheus.
        """
        stats = self._cache.stats()
        with self._lock:
            resident = [self._forms.get(key) for key in self._cache.order()]
            stats["registered"] = len(self._loaded)
        stats["merged"] = sum(1 for form in resident if form)
        stats["unmerged"] = sum(1 for form in resident if form is False)
        asked = stats["hits"] + stats["misses"]
        stats["hit_rate"] = stats["hits"] / asked if asked else None
        return stats

    def is_resident(self, name: str) -> bool:
        """Whether adapter ``name`` is loaded and its head in memory (no hit counted)."""
        entry = self._snapshot().get(name)
        return entry is not None and self._cache.resident(entry.key)

    def resident_names(self) -> set[str]:
        """The adapters whose head is in memory now."""
        keys = set(self._cache.order())
        return {name for name, entry in self._snapshot().items() if entry.key in keys}

    def resident(self, names) -> dict[str, Head] | None:
        """The heads of ``names`` if every one is in memory (each a hit), else None;
        never builds (the server asks this on its event loop)."""
        loaded = self._snapshot()
        if any(name not in loaded or not self._cache.resident(loaded[name].key)
               for name in names):
            return None
        heads = {}
        for name in names:
            head = self._cache.peek(loaded[name].key)
            if head is None:  # evicted in between
                return None
            heads[name] = head
        return heads

    def warm(self, names) -> dict[str, Head]:
        """Make the adapters ``names`` resident now (each cold head built once, however
        many threads ask) and return their heads, for ``encode(..., heads=...)``.

        Raises:
            UnknownAdapterError: A name that is not loaded.
            AdapterLoadError: A head cannot be built (its file is gone or damaged, or it is
                larger than ``adapter_memory``).
        """
        loaded = self._snapshot()
        return self._heads_of([n for n in dict.fromkeys(names) if n is not None], loaded)

    def _heads_of(self, names, loaded: dict[str, _Loaded],
                  given: dict[str, Head] | None = None) -> dict[str, Head]:
        heads = {}
        for name in names:
            if given is not None and name in given:
                heads[name] = given[name]
                continue
            if name not in loaded:
                raise self._unknown(name, loaded)
            heads[name] = self._head(loaded[name])
        return heads

    def _head(self, entry: _Loaded) -> Head:
        try:
            return self._cache.get(entry.key)
        except Exception as err:
            if not self._lazy:
                raise
            raise AdapterLoadError(
                f"adapter {entry.info.name!r} cannot be loaded from {entry.info.path}: {err} "
                "(the other adapters keep serving; fix or unload this one)."
            ) from err

    def _build(self, key: int) -> tuple[Head, int]:
        """The head of the registration ``key`` and the bytes it owns (the cache's builder)."""
        with self._lock:
            entry = self._by_key[key]
            merge = self._forms.get(key)
        if merge is None:
            merge = self._merge_for(entry.info.kind, entry.merge)
        info = entry.info
        if self._lazy:  # registered from metadata: check the files again, they may be gone
            artifact.read(info.path)
        head = None if merge else self.engine.compact_head(info.path, info.meta)
        if head is None:
            head = self.engine.build_head(info.path, info.meta, merge)
        with self._lock:
            self._forms.setdefault(key, head.merged)
            current = self._loaded.get(info.name)
            if current is not None and current.key == key:
                self._infos[info.name] = dataclasses.replace(self._infos[info.name],
                                                             merged=head.merged)
        return head, self.owned_bytes(head)

    def owned_bytes(self, head: Head) -> int:
        """The bytes ``head`` owns, as the memory budget counts them (its private blocks, a
        LoRA adapter's factors and their packed copy, the per-head overhead; the base's
        tensors excluded)."""
        return head_bytes(head, self._basestorages(), self._compute_itemsize())

    def _estimate(self, key: int) -> int:
        """A head's bytes before building it, in the form it will have."""
        with self._lock:
            entry = self._by_key[key]
            merge = self._forms.get(key)
        if merge is None:
            merge = self._merge_for(entry.info.kind, entry.merge)
        return self._head_estimate(entry.info, merge)

    def _head_estimate(self, info: Any, merge: bool) -> int:
        """The bytes of ``info``'s head in that form: its k blocks if merged, plus (LoRA)
        its factors and their packed copy, both in the compute dtype (the weights file
        holds them in float32), plus the per-head overhead."""
        size = HEAD_OVERHEAD + (self._block_bytes(info.top_k) if merge else 0)
        weights = info.path / artifact.WEIGHTS
        if info.kind != "lora" or not weights.is_file():
            return size
        return size + int(weights.stat().st_size * 2 * self._compute_itemsize() / 4)

    def _merge_for(self, kind: str, merge: bool | None) -> bool:
        """The form a head is built in: the full kind merged; an explicit ``merge``; on a
        quantized base unmerged; without a budget merged; with one, merged while the budget
        holds every registered adapter merged, else unmerged (docs/many-adapters.md)."""
        if kind_named(kind).always_merged:
            return True
        if merge is not None:
            return merge
        if self.quantized:
            return False
        budget = self._cache.budget
        return budget is None or self._merged_total <= budget

    def _count_merged(self, entry: _Loaded, sign: int) -> None:
        """Add (remove) an adapter to the bytes every registered adapter would use merged;
        when that crosses the budget, the adapters not built yet change their form (their
        :attr:`adapters` entry says so). Holds the lock."""
        before = self._merge_for("lora", None)
        self._merged_total += sign * self._head_estimate(entry.info, merge=True)
        now = self._merge_for("lora", None)
        if now == before:
            return
        for name, other in self._loaded.items():
            undecided = other.key not in self._forms and other.merge is None
            if undecided and not kind_named(other.info.kind).always_merged:
                self._infos[name] = dataclasses.replace(self._infos[name], merged=now)

    def _basestorages(self) -> frozenset[int]:
        if self._shared is None:
            model = self.model
            self._shared = frozenset(storages([*model.parameters(), *model.buffers()]))
        return self._shared

    def _compute_itemsize(self) -> int:
        """Bytes per element of the dtype the blocks compute in (LoRA factors are packed
        in it for the grouped matmuls)."""
        return compute_dtype(self.model).itemsize

    def _block_bytes(self, top_k: int) -> int:
        """The bytes of the base's top-k blocks (a merged or full head's size)."""
        if top_k not in self._block_sizes:
            from lastlayer.core.kinds.common import top_blocks

            self._block_sizes[top_k] = blocks_bytes(top_blocks(self.model, top_k), frozenset())
        return self._block_sizes[top_k]
