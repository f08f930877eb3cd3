"""The inference engine: one base in memory, each adapter's private heads, the trunk run once.

(~470 lines: the planner and runner of one batch read the same plan, trunk and head
snapshot; the grouped pass's own machinery is in :mod:`lastlayer.core.grouped`.)

Every lastlayer adapter changes only blocks L−k … L−1 of its base, so rows bound for
different adapters share the frozen bottom exactly. For each batch the engine

1. plans it (:func:`plan_batch`): which rows (text × token limit) it tokenizes, which
   adapter's head runs on which rows, and how deep each row must be carried;
2. runs the trunk once (:meth:`Engine.trunk`): the base's bottom up to the lowest block
   any row needs, then the base blocks between split points on the rows that go further;
3. runs each adapter's :class:`~lastlayer.core.heads.Head` (its private top-k blocks) on
   its rows, and the base's remaining blocks on the rows for the base, then pools and
   normalises as each adapter was trained to. Plain LoRA adapters of one k (with the
   base's rows where they start at the same block) run as one pass instead
   (:func:`groups`, :mod:`lastlayer.core.grouped`): the base's top-k blocks once over all
   their rows with each row's LoRA update, so a batch spread over 16 adapters reads the
   weights a single-adapter batch reads.

Embedding one text under N adapters of top-k thus costs ``(L − k) + N·k`` block passes
instead of ``N·L``, for LoRA and full adapters alike, side by side on one base, and a
batch mixing adapters row by row costs what a single-adapter batch does (L block passes
per row; LoRA groups add ``2·r·(in + out)`` FLOPs per token and linear). Everything
that embeds with an adapter goes through here: ``eval``, ``probe``, ``export`` (through
:func:`lastlayer.core.target.load_target`), ``embed``, ``serve`` and the Python API (through
:class:`lastlayer.inference.Embedder`, the adapter registry on an engine).

Nothing here changes the base model: heads (:mod:`lastlayer.core.heads`) run private
copies of their blocks (built by the adapter's kind, :mod:`lastlayer.core.kinds`) and every
forward goes through views of the model (:mod:`lastlayer.core.split`), so any number of
threads may embed at once.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lastlayer.artifact import ArtifactMeta
from lastlayer.core.encoder import Encoder, longest_first_batches, mean_pool
from lastlayer.core.grouped import GroupedLora, read_factors
from lastlayer.core.heads import Head, build_head, compact_head, pooled
from lastlayer.core.layers import find_layer_stack
from lastlayer.core.progress import progress as progress_bar
from lastlayer.core.split import BottomRunner, MiddleRunner, TopKHead

__all__ = ["AUTO", "Assign", "BatchPlan", "Embeddings", "Engine", "Head", "Key", "Requests",
           "build_head", "groups", "plan_batch"]

AUTO = "auto"
"""``adapter="auto"``: route each text to the adapter whose domain it belongs to."""

Key = str | None
"""Which head embeds a row: an adapter's name, or None for the base."""

Assign = Callable[[Mapping[str, Any], dict[int, np.ndarray]], Sequence[Key]]
"""The routing rule: (signatures by name, mean-pooled block inputs by block) -> one name
(or None) per row (:func:`lastlayer.core.routing.assign`)."""


@dataclass(eq=False)  # vectors compare with numpy, not ==
class Embeddings:
    """What an encode call gives: one result type, whatever was asked.

    Attributes:
        vectors: ``(N, d)`` float32, rows in the order of the texts.
        tokens: ``(N,)`` int64: the tokens each text was embedded from (special tokens
            included, after truncation to its adapter's limit), as the tokenizer gave them.
        routed: With ``adapter="auto"``: per text, the adapter routing picked (None: the
            base); else None.
    """

    vectors: np.ndarray
    tokens: np.ndarray
    routed: list[Key] | None = None

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass
class BatchPlan:
    """One batch, planned: what to tokenize, what runs where.

    Attributes:
        items: The rows to tokenize: ``(text index, token limit)``.
        jobs: Per head (None: the base), its rows: ``(row in items, text index, out)``;
            row ``i`` of ``out`` receives the vector.
        starts: The block each head starts at (L − k; the base: the deepest split point).
    """

    items: list[tuple[int, int]] = field(default_factory=list)
    jobs: dict[Key, list[tuple[int, int, np.ndarray]]] = field(default_factory=dict)
    starts: dict[Key, int] = field(default_factory=dict)

    def depth(self) -> list[int]:
        """How deep each row must be carried: the deepest start of a head that runs on it."""
        depth = [0] * len(self.items)
        for key, members in self.jobs.items():
            for row, _, _ in members:
                depth[row] = max(depth[row], self.starts[key])
        return depth


Requests = Sequence[Sequence[tuple[Key, np.ndarray]]]
"""Per text, the ``(head, out)`` pairs it is embedded for (row i of ``out`` receives it)."""


class Engine:
    """The batch planner and runner over one base :class:`~lastlayer.core.encoder.Encoder`.

    It holds the base and the views of it (built once, cached); the heads are given to
    each call, so a registry (:class:`lastlayer.inference.Embedder`) can add and remove
    adapters while calls run on their own snapshot.
    """

    def __init__(self, encoder: Encoder, trunk: nn.Module | None = None) -> None:
        self.encoder = encoder
        # what the shared bottom and middle views run: the base, or a copy of it in
        # another precision (lastlayer.core.int8); heads always copy the base's own blocks
        self.trunk_model = encoder.model if trunk is None else trunk
        self.num_layers = find_layer_stack(encoder.model).num_layers
        self._views: dict[tuple, nn.Module] = {}
        self.grouped = True
        """Run plain LoRA adapters of one shape in one pass (:func:`groups`); False: every
        head alone (the same vectors to float rounding; for measuring)."""
        self.working_memory: Callable[[int], contextlib.AbstractContextManager[Any]] = _uncounted
        """Entered around each grouped pass with the bytes it gathers for its rows' factors,
        so that a memory budget counts them while it runs
        (:meth:`lastlayer.inference.residency.HeadCache.hold`); by default nothing counts."""
        self._views_lock = threading.Lock()

    @property
    def model(self) -> nn.Module:
        """The base transformers model (frozen, eval mode; never modified)."""
        return self.encoder.model

    @property
    def dim(self) -> int:
        """The embedding size."""
        return int(self.model.get_input_embeddings().embedding_dim)

    def build_head(self, folder: str | Path, meta: ArtifactMeta, merge: bool) -> Head:
        """:func:`build_head` on this engine's base."""
        return build_head(self.model, folder, meta, merge)

    def compact_head(self, folder: str | Path, meta: ArtifactMeta) -> Head | None:
        """The unmerged head of a plain LoRA artifact as its factors alone, on this
        engine's grouped view of the base's top-k blocks (:func:`compact_head`); None
        where the adapter is more than plain LoRA (then :meth:`build_head`)."""
        factors = read_factors(self.model, folder, meta.top_k) if meta.kind == "lora" else None
        if factors is None:
            return None
        return compact_head(self.view("grouped", *factors.shape), factors, meta)

    # -----------------------------------------------------------------------------------
    # Entry points.

    def embed(self, texts: list[str], keys: Sequence[Key], heads: Mapping[str, Head],
              batch_size: int = 32, normalize: bool | None = None,
              progress: bool | None = None, desc: str = "embed") -> Embeddings:
        """Text ``i`` embedded by ``heads[keys[i]]`` (None: the base); names are checked
        by the caller."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokens = np.zeros(len(texts), dtype=np.int64)
        self.embed_requests(texts, [[(key, out)] for key in keys], heads, batch_size,
                            normalize, progress, tokens, desc)
        return Embeddings(out, tokens)

    def embed_each(self, texts: list[str], names: Sequence[Key], heads: Mapping[str, Head],
                   batch_size: int = 32, normalize: bool | None = None,
                   progress: bool | None = None) -> dict[Key, np.ndarray]:
        """Every text under every one of ``names``, one bottom pass per batch."""
        outs = {name: np.zeros((len(texts), self.dim), dtype=np.float32) for name in names}
        if outs:
            requests = [list(outs.items()) for _ in texts]
            self.embed_requests(texts, requests, heads, batch_size, normalize, progress)
        return outs

    def route(self, texts: list[str], heads: Mapping[str, Head], signatures: Mapping[str, Any],
              assign: Assign, batch_size: int = 32, progress: bool | None = None
              ) -> list[Key]:
        """The head each text is routed to (None: the base); runs only the base's bottom,
        up to the deepest block a signature pools."""
        names: list[Key] = [None] * len(texts)
        with torch.inference_mode():
            for idx in self._batches(texts, batch_size, progress, "embed"):
                picked, _ = self._routed_batch(texts, idx, heads, signatures, assign, None,
                                               None)
                for i, name in zip(idx, picked, strict=True):
                    names[i] = name
        return names

    def embed_routed(self, texts: list[str], heads: Mapping[str, Head],
                     signatures: Mapping[str, Any], assign: Assign, batch_size: int = 32,
                     normalize: bool | None = None, progress: bool | None = None
                     ) -> Embeddings:
        """Each text routed and embedded by the head routing picks, from one trunk pass.

        Rows routed to an adapter whose token limit differs from the base's are embedded
        again at their own limit (one more pass for those rows only)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokens = np.zeros(len(texts), dtype=np.int64)
        names: list[Key] = [None] * len(texts)
        later: list[tuple[int, str]] = []
        with torch.inference_mode():
            for idx in self._batches(texts, batch_size, progress, "embed"):
                picked, deferred = self._routed_batch(texts, idx, heads, signatures, assign,
                                                      normalize, (out, tokens))
                for i, name in zip(idx, picked, strict=True):
                    names[i] = name
                later += deferred
        if later:
            again = self.embed([texts[i] for i, _ in later], [name for _, name in later],
                               heads, batch_size, normalize, False)
            rows = [i for i, _ in later]
            out[rows], tokens[rows] = again.vectors, again.tokens
        return Embeddings(out, tokens, names)

    # -----------------------------------------------------------------------------------
    # Batches with explicit heads.

    def embed_requests(self, texts: list[str], requests: Requests,
                       heads: Mapping[str, Head], batch_size: int = 32,
                       normalize: bool | None = None, progress: bool | None = None,
                       tokens: np.ndarray | None = None, desc: str = "embed") -> None:
        """Embed ``texts`` for ``requests`` (see :data:`Requests`); ``tokens[i]`` (if
        given) receives the length of text ``i``'s input (one head per text)."""
        limit = self._limits(heads)
        with torch.inference_mode():
            for idx in self._batches(texts, batch_size, progress, desc):
                plan = plan_batch(idx, requests, limit, self.num_layers, heads)
                batch = self._tokenize(plan.items, texts)
                if tokens is not None:
                    lengths = batch["attention_mask"].sum(1).tolist()
                    for row, (i, _) in enumerate(plan.items):
                        tokens[i] = lengths[row]
                trunk = self.trunk(batch, plan.depth(), sorted(set(plan.starts.values())))
                self._run_heads(plan.jobs, plan.starts, trunk, heads, normalize)

    @staticmethod
    def _batches(texts: list[str], batch_size: int, progress: bool | None, desc: str):
        """The batches of ``texts``, longest first, behind a progress bar (None: only on a
        terminal); run them under ``torch.inference_mode()``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        return progress_bar(longest_first_batches(texts, batch_size), enabled=progress,
                            desc=desc, unit="batch")

    def _limits(self, heads: Mapping[str, Head]) -> Callable[[Key], int]:
        base = self.encoder.max_length
        return lambda key: base if key is None else heads[key].max_length

    # -----------------------------------------------------------------------------------
    # Routed batches.

    def _routed_batch(self, texts: list[str], idx: list[int], heads: Mapping[str, Head],
                      signatures: Mapping[str, Any], assign: Assign,
                      normalize: bool | None, into: tuple[np.ndarray, np.ndarray] | None
                      ) -> tuple[list[Key], list[tuple[int, str]]]:
        """Route the texts ``idx`` by ``signatures`` at the base's token limit and, with
        ``into = (out, tokens)``, embed them too. Returns the names, and the ``(text,
        name)`` pairs left for a second pass (their adapter's token limit differs)."""
        limit = self.encoder.max_length
        route_layers = {sig.layer for sig in signatures.values()}
        starts: dict[Key, int] = {}
        if into is not None:
            starts = {name: self.num_layers - heads[name].top_k for name in signatures}
            starts[None] = max([*starts.values(), *route_layers])
        layers = sorted(route_layers | set(starts.values()))
        batch = self._tokenize([(i, limit) for i in idx], texts)
        trunk = self.trunk(batch, [layers[-1]] * len(idx), layers)
        pooled = {}
        for layer in route_layers:  # every row reaches every layer: rows in batch order
            _, states, mask = trunk[layer]
            pooled[layer] = mean_pool(states.float(), mask).cpu().numpy()
        names = list(assign(signatures, pooled))
        if len(names) != len(idx) or not set(names) <= {*signatures, None}:
            raise RuntimeError(f"routing returned {names!r} for {len(idx)} texts and "
                               f"adapters {sorted(signatures)}.")
        deferred: list[tuple[int, str]] = []
        if into is not None:
            out, tokens = into
            tokens[idx] = batch["attention_mask"].sum(1).cpu().numpy()
            jobs: dict[Key, list[tuple[int, int, np.ndarray]]] = {}
            for row, (i, name) in enumerate(zip(idx, names, strict=True)):
                if name is not None and heads[name].max_length != limit:
                    deferred.append((i, name))
                else:
                    jobs.setdefault(name, []).append((row, i, out))
            self._run_heads(jobs, starts, trunk, heads, normalize)
        return names, deferred

    # -----------------------------------------------------------------------------------
    # The pieces: tokens, trunk, heads.

    def _tokenize(self, items: list[tuple[int, int]], texts: list[str]) -> dict[str, Tensor]:
        """Model inputs for ``(text index, max_length)`` items, each truncated to its own
        limit and padded on the right to the longest."""
        tokenizer = self.encoder.tokenizer
        ids: list[list[int]] = [[]] * len(items)
        by_length: dict[int, list[int]] = {}
        for row, (_, limit) in enumerate(items):
            by_length.setdefault(limit, []).append(row)
        for limit, rows in by_length.items():
            encoded = tokenizer([texts[items[r][0]] for r in rows], truncation=True,
                                max_length=limit)["input_ids"]
            for row, tokens in zip(rows, encoded, strict=True):
                ids[row] = tokens
        width = max(len(tokens) for tokens in ids)
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        device = self.encoder.device
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}

    def trunk(self, batch: dict[str, Tensor], depth: list[int], layers: list[int]
              ) -> dict[int, tuple[list[int], Tensor, Tensor]]:
        """The base's states at each of ``layers`` (block inputs), for the rows that need
        them: row ``r`` is carried up to block ``depth[r]``.

        Returns ``{layer: (rows, states, mask)}``; one bottom pass for every row, then the
        base blocks between consecutive layers on the rows that go further.
        """
        mask = batch["attention_mask"]
        states = self.view("bottom", self.num_layers - layers[0])(batch)
        rows = list(range(len(depth)))
        found = {layers[0]: (rows, states, mask)}
        for below, layer in itertools.pairwise(layers):
            going = [r for r in rows if depth[r] >= layer]
            if len(going) != len(rows):
                positions = {r: p for p, r in enumerate(rows)}
                keep = torch.tensor([positions[r] for r in going], device=states.device)
                states, mask, rows = states.index_select(0, keep), mask.index_select(0, keep), going
            states = self.view("middle", below, layer)(states, mask)
            found[layer] = (rows, states, mask)
        return found

    def view(self, kind: str, *args: Any) -> nn.Module:
        """A view of the base (``bottom``, ``middle``, ``head`` or ``grouped``: the base's
        top-k blocks with per-row LoRA updates), built once and cached."""
        key = (kind, *args)
        view = self._views.get(key)
        if view is None:
            with self._views_lock:
                view = self._views.get(key)
                if view is None:
                    build = {"bottom": BottomRunner, "middle": MiddleRunner, "head": TopKHead,
                             "grouped": GroupedLora}
                    # heads (and the grouped pass over the base's top blocks) run the base
                    # as loaded; the shared trunk may be its int8 copy
                    source = self.model if kind in ("head", "grouped") else self.trunk_model
                    view = self._views[key] = build[kind](source, *args)
        return view

    def _settings(self, key: Key, heads: Mapping[str, Head]
                  ) -> tuple[nn.Module | None, str, bool]:
        """(head module, pooling, normalize) of an adapter, or of the base (its module is
        built by the caller: it depends on where the base's rows start)."""
        if key is None:
            return None, self.encoder.pooling, self.encoder.normalize
        head = heads[key]
        return head.module, head.pooling, head.normalize

    def _run_heads(self, jobs: dict[Key, list[tuple[int, int, np.ndarray]]],
                   starts: dict[Key, int], trunk, heads: Mapping[str, Head],
                   normalize: bool | None) -> None:
        """Run each head (or the base's remaining blocks) on its rows, pool, and write
        row ``i`` of each ``out``; ``jobs[key]`` lists ``(row, i, out)``. Plain LoRA
        adapters of one shape run in one pass (:func:`groups`)."""
        for keys in groups(jobs, starts, heads, self.grouped):
            rows, states, mask = trunk[starts[keys[0]]]
            positions = {r: p for p, r in enumerate(rows)}
            take = [positions[row] for key in keys for row, _, _ in jobs[key]]
            if take != list(range(len(rows))):
                keep = torch.tensor(take, device=states.device)
                states, mask = states.index_select(0, keep), mask.index_select(0, keep)
            if len(keys) == 1:
                lasts = self._head_module(keys[0], starts[keys[0]], heads)(states, mask)
            else:
                lasts = self._grouped(keys, jobs, heads, states, mask)
            done = 0  # keys that pool alike (the usual group) pool in one call
            for (pooling, own_normalize), alike in itertools.groupby(
                    keys, lambda key: self._settings(key, heads)[1:]):
                members = [member for key in alike for member in jobs[key]]
                part = slice(done, done + len(members))
                vectors = pooled(lasts[part], mask[part], pooling,
                                 own_normalize if normalize is None else normalize)
                for vector, (_, i, out) in zip(vectors.cpu().numpy(), members, strict=True):
                    out[i] = vector
                done += len(members)

    def _head_module(self, key: Key, start: int, heads: Mapping[str, Head]) -> nn.Module:
        """The module that runs one head: an adapter's private blocks, or the base's own
        blocks from ``start`` up."""
        module = self._settings(key, heads)[0]
        return self.view("head", self.num_layers - start) if module is None else module

    def _grouped(self, keys: list[Key], jobs, heads: Mapping[str, Head], states: Tensor,
                 mask: Tensor) -> Tensor:
        """Last states of a group's rows (in ``keys`` order) from one pass of the base's
        top-k blocks with each row's LoRA update (:class:`GroupedLora`)."""
        members = [None if key is None else heads[key].lora for key in keys]
        top_k, names = next(m for m in members if m is not None).shape
        which = torch.tensor([g for g, key in enumerate(keys) for _ in jobs[key]],
                             device=states.device)
        view = self.view("grouped", top_k, names)
        with self.working_memory(view.gathered_bytes(members, len(which), states.dtype)):
            return view(states, mask, members, which)


def _uncounted(_nbytes: int) -> contextlib.AbstractContextManager[None]:
    """No memory budget: a grouped pass's working memory is not counted."""
    return contextlib.nullcontext()


def groups(jobs: Mapping[Key, list], starts: Mapping[Key, int], heads: Mapping[str, Head],
           enabled: bool = True) -> list[list[Key]]:
    """Which heads run together: plain LoRA adapters of one shape (k and wrapped linears),
    with the base's rows if they start at the same block, in one pass when there are two
    or more of them; every other head alone (its own blocks, the fastest for one).
    ``enabled=False``: every head alone."""
    shapes: dict[tuple, list[Key]] = {}
    alone: list[list[Key]] = []
    for key in jobs:
        lora = None if key is None or not enabled else heads[key].lora
        if lora is None:
            alone.append([key])
        else:
            shapes.setdefault((starts[key], lora.shape), []).append(key)
    for (start, _), keys in shapes.items():
        if [None] in alone and starts[None] == start:
            alone.remove([None])
            keys.append(None)
    together = [keys for keys in shapes.values() if len(keys) > 1]
    return [*alone, *together, *([key] for keys in shapes.values() if len(keys) == 1
                                 for key in keys)]


def plan_batch(idx: list[int], requests: Requests, limit: Callable[[Key], int],
               num_layers: int, heads: Mapping[str, Head]) -> BatchPlan:
    """Plan one batch of texts ``idx``: one row per (text, token limit) it needs, each head
    on its rows, each head's start block (the base: its remaining blocks from the deepest
    split point)."""
    plan = BatchPlan()
    rows: dict[tuple[int, int], int] = {}
    for i in idx:
        for key, out in requests[i]:
            row = rows.setdefault((i, limit(key)), len(rows))
            plan.jobs.setdefault(key, []).append((row, i, out))
    plan.items = list(rows)
    plan.starts = {key: num_layers - heads[key].top_k for key in plan.jobs if key is not None}
    if None in plan.jobs:
        plan.starts[None] = max(plan.starts.values(), default=num_layers - 1)
    return plan
