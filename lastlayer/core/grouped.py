"""Many LoRA adapters of one shape in one pass: the base's top-k blocks run once over all
their rows, each row's own low-rank update added on the way (Punica's BGMV, with ``bmm``).

A batch whose rows go to N different adapters would otherwise run N heads, each reading
its own copy of k blocks of weights for a few rows: N times the weight traffic of a
single-adapter batch, and N forwards. But LoRA adapters of the same k on one base share
every weight except their factors: ``y = x Wᵀ + s · (x Aᵀ) Bᵀ``. So the engine runs the
base's own top-k blocks once over every row of the group (one matmul per linear for all
of them, the weights read once), and around each target linear adds, per row, that row's
adapter's update with two ``torch.bmm``: ``(rows, T, in) @ (rows, in, r)``, then the
sum written in place, ``out += low @ (rows, r, out)``. That costs ``2·r·(in + out)``
FLOPs per token and linear on top of ``2·in·out`` (about 3 % at r = 8, d = 384), and
reads each adapter's factors (a few hundred KB) instead of its blocks (MBs).

What keeps the update cheap next to its FLOPs (every op here is small, so dispatch and
memory passes count more than arithmetic):

- **One gather per batch.** Each adapter's factors are packed once, in the dtype the
  blocks compute in (bf16 under ``auto``), as flat pieces (:meth:`GroupedLora.pieces`,
  kept while the adapter is loaded); a batch concatenates its rows' pieces in one
  ``torch.cat``, and every ``bmm`` reads a contiguous view of that buffer: no per-call
  casts, zero-fills or per-adapter copies.
- **One A product per input.** Linears that read the same tensor (q, k and v; gate and
  up) get one ``bmm`` against their adapters' ``A`` side by side, and each takes its
  columns of the result: a third of the A products for BERT's attention, half of the
  MLP's for Llama. Which linears share an input is learnt from the first call (the
  tensor each one receives), so no architecture is named here; a later call whose
  tensors differ falls back to one product per linear, never to a wrong one.

The factors come from the artifact's own files (:func:`read_factors`), so a merged head
(the fast single-adapter path) can join a group too. Only plain LoRA qualifies (no DoRA,
bias, rank or alpha patterns, saved modules, ...); any other adapter keeps its own head.
Rows for the base join a group with zero factors; ranks are padded with zeros to the
group's largest.

The per-row factors of a call reach the wrapped linears through a context variable, so
the grouped view, built once per (k, target linears), is shared by every thread while
each call sees its own rows. Nothing here changes the base (views and structural copies,
:mod:`lastlayer.core.split`).
"""

from __future__ import annotations

import contextvars
import json
import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lastlayer.core.layers import find_layer_stack
from lastlayer.core.split import TopKHead, base_of, structural_copy

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"

# adapter_config.json entries that make an adapter something else than y = xWᵀ + s·xAᵀBᵀ
# on the listed linears: a set value sends the adapter to its own head.
_UNSUPPORTED = ("alpha_pattern", "rank_pattern", "modules_to_save", "layer_replication",
                "trainable_token_indices", "alora_invocation_tokens", "target_parameters",
                "use_dora", "use_qalora", "use_bdlora", "lora_bias", "fan_in_fan_out")


@dataclass(frozen=True, eq=False)  # identity: packed pieces are cached per adapter
class LoraFactors:
    """A plain LoRA adapter's factors, by linear inside its top-k blocks.

    Attributes:
        top_k: k.
        factors: ``"j.sub.name"`` (block ``j`` of the k, then the linear's name inside the
            block) -> ``(Aᵀ (in, r), s·Bᵀ (r, out))``, contiguous, in the dtype the
            base computes in (computed in float32, rounded once: what packing them for
            the matmuls would round them to anyway, at half the memory in bf16).
    """

    top_k: int
    factors: dict[str, tuple[Tensor, Tensor]]

    @property
    def shape(self) -> tuple[int, tuple[str, ...]]:
        """What a grouped pass depends on: k and the wrapped linears."""
        return self.top_k, tuple(sorted(self.factors))

    @property
    def rank(self) -> int:
        """The largest rank of its linears."""
        return max(a.shape[1] for a, _ in self.factors.values())


def read_factors(base: nn.Module, folder: str | Path, top_k: int) -> LoraFactors | None:
    """The factors of the LoRA artifact at ``folder`` (validated) on ``base``, or None
    where the adapter is more than plain LoRA on linears of its top-k blocks."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA" or config.get("bias", "none") != "none" \
            or any(config.get(name) for name in _UNSUPPORTED):
        return None
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    stack = find_layer_stack(base_of(base))
    first = stack.num_layers - top_k
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, tensor in load_file(str(folder / ADAPTER_FILE)).items():
        module, _, part = key.removeprefix("base_model.model.").rpartition(".lora_")
        if part not in ("A.weight", "B.weight") or not module.startswith(stack.prefix + "."):
            return None
        index, _, sub = module[len(stack.prefix) + 1:].partition(".")
        if not index.isdigit() or not first <= int(index) < stack.num_layers or not sub:
            return None
        pairs.setdefault(f"{int(index) - first}.{sub}", {})[part[0]] = tensor
    if not pairs or any(set(p) != {"A", "B"} for p in pairs.values()):
        return None
    dtype = compute_dtype(base)
    made = [(p["A"].float().t(), (p["B"].float() * scale).t()) for p in pairs.values()]
    views = iter(flat_views([t.shape for pair in made for t in pair], dtype, torch.device("cpu")))
    factors = {}
    for name, (a, b) in zip(pairs, made, strict=True):
        factors[name] = (next(views).copy_(a), next(views).copy_(b))
    return LoraFactors(top_k, factors)


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype ``model``'s blocks compute in (float32 where its first parameter is not a
    float, as in a bitsandbytes-quantized model's int8 weights): LoRA factors are kept and
    packed in it."""
    dtype = getattr(base_of(model), "dtype", torch.float32)
    return dtype if dtype.is_floating_point else torch.float32


def flat_views(shapes: Sequence[tuple[int, ...]], dtype: torch.dtype,
               device: torch.device) -> list[Tensor]:
    """Contiguous zero tensors of ``shapes``, all views of one buffer: one allocation per
    adapter instead of one per matrix (a thousand adapters are tens of thousands of small
    tensors otherwise, each with its own allocator overhead)."""
    sizes = [math.prod(shape) for shape in shapes]
    flat = torch.zeros(sum(sizes), dtype=dtype, device=device)
    return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True)]


Sets = tuple[tuple[str, ...], ...]
"""The wrapped linears partitioned by input: the linears of one set read the same tensor
(e.g. q, k, v), so one ``bmm`` computes their A products together."""


@dataclass(frozen=True)
class Layout:
    """How a group's factors are laid out for one call: the pieces of each adapter, in
    order, are one ``Aᵀ`` per input set (its linears' columns side by side) and then one
    ``s·Bᵀ`` per linear (in ``names`` order), every rank padded to ``rank``.

    Attributes:
        sets: The input sets (:data:`Sets`).
        names: The wrapped linears, in the order of their ``B`` pieces.
        rank: The group's rank (its members' largest).
        dtype: The dtype the blocks compute in.
    """

    sets: Sets
    names: tuple[str, ...]
    rank: int
    dtype: torch.dtype

    def shapes(self, dims: dict[str, tuple[int, int]]) -> list[tuple[int, int]]:
        """The 2-D shape of each piece, given ``(in, out)`` per linear."""
        return ([(dims[s[0]][0], len(s) * self.rank) for s in self.sets]
                + [(self.rank, dims[name][1]) for name in self.names])


def pack(factors: LoraFactors | None, layout: Layout, dims: dict[str, tuple[int, int]],
         device: torch.device) -> list[Tensor]:
    """One adapter's pieces under ``layout`` (see :class:`Layout`), flat and contiguous,
    zeros for the base (``factors`` None) and for ranks below the layout's."""
    pieces = flat_views([(rows * cols,) for rows, cols in layout.shapes(dims)], layout.dtype,
                        device)
    if factors is None:
        return pieces
    r = layout.rank
    for piece, names in zip(pieces[: len(layout.sets)], layout.sets, strict=True):
        a = piece.view(dims[names[0]][0], len(names) * r)
        for i, name in enumerate(names):
            own = factors.factors[name][0]
            a[:, i * r: i * r + own.shape[1]] = own
    for piece, name in zip(pieces[len(layout.sets):], layout.names, strict=True):
        own = factors.factors[name][1]
        piece.view(r, dims[name][1])[: own.shape[0]] = own
    return pieces


class _Call:
    """One grouped call's per-row factors and the A products shared between linears."""

    def __init__(self, layout: Layout, views: list[Tensor], learn: bool) -> None:
        sets = layout.sets
        self.a = views[: len(sets)]
        self.b = dict(zip(layout.names, views[len(sets):], strict=True))
        r = layout.rank
        # linear -> (its set, its columns of the set's product or None, last of its set)
        self.where = {name: (s, None if len(names) == 1 else slice(i * r, (i + 1) * r),
                             i == len(names) - 1)
                      for s, names in enumerate(sets) for i, name in enumerate(names)}
        self.shared: dict[int, tuple[Tensor, Tensor]] = {}
        self.seen: list[tuple[str, Tensor]] | None = [] if learn else None

    def apply(self, name: str, x: Tensor, out: Tensor) -> Tensor:
        """``out`` (the base linear's output for ``x``) plus each row's update."""
        if self.seen is not None:
            self.seen.append((name, x))
        s, cols, last = self.where[name]
        hit = self.shared.get(s)
        if hit is not None and hit[0] is x:
            low = hit[1]
            if last:
                del self.shared[s]
        else:  # the set's first linear (or a call whose inputs differ: its own product)
            a = self.a[s].to(x.dtype)
            low = torch.bmm(x, a) if a.dim() == 3 else x @ a
            if cols is not None and not last:
                self.shared[s] = (x, low)
        if cols is not None:
            low = low[..., cols]
        low, b = low.to(out.dtype), self.b[name].to(out.dtype)
        if b.dim() == 2:  # one adapter for every row: plain matmuls over all the tokens
            flat, low = out.view(-1, out.shape[-1]), low.reshape(-1, low.shape[-1])
            if torch.is_grad_enabled():
                return torch.addmm(flat, low, b).view(out.shape)
            flat.addmm_(low, b)
            return out
        if torch.is_grad_enabled():
            return torch.baddbmm(out, low, b)
        # in place: a new (B, T, out) tensor for the sum costs as much as both products
        return out.baddbmm_(low, b)


_CALL: contextvars.ContextVar[_Call | None] = \
    contextvars.ContextVar("lastlayer_grouped_call", default=None)


class RowLora(nn.Module):
    """A base linear plus, per row of its input, that row's adapter's low-rank update."""

    def __init__(self, linear: nn.Module, name: str) -> None:
        super().__init__()
        self.linear, self.name = linear, name

    def forward(self, x: Tensor) -> Tensor:
        out = self.linear(x)
        call = _CALL.get()
        # outside a grouped call: the base linear alone
        return out if call is None else call.apply(self.name, x, out)


class GroupedLora(nn.Module):
    """The base's top-k blocks (structural copies: the base's weights) with every linear
    of ``names`` wrapped in :class:`RowLora`, run over the base's masks and final norm."""

    def __init__(self, model: nn.Module, top_k: int, names: Sequence[str]) -> None:
        super().__init__()
        base = base_of(model)
        stack = find_layer_stack(base)
        originals = list(base.get_submodule(stack.prefix))[stack.num_layers - top_k:]
        blocks = [structural_copy(block) for block in originals]
        for name in names:
            index, _, sub = name.partition(".")
            parent_name, _, attr = sub.rpartition(".")
            parent = blocks[int(index)].get_submodule(parent_name)
            parent._modules[attr] = RowLora(parent._modules[attr], name)
        self.names = tuple(names)
        self.head = TopKHead(base, top_k, blocks=blocks)
        self.sets: Sets | None = None
        """The input sets, learnt from the first call (None until then: one per linear)."""
        self._packed: weakref.WeakKeyDictionary[LoraFactors, tuple[Layout, list[Tensor]]] = \
            weakref.WeakKeyDictionary()
        self._zeros: dict[Layout, tuple[Layout, list[Tensor]]] = {}
        self._lock = threading.Lock()

    def forward(self, states: Tensor, mask: Tensor, members: Sequence[LoraFactors | None],
                which: Tensor | Sequence[int]) -> Tensor:
        """Block L−k's inputs ``(B, T, d)`` + mask -> last states; row ``i`` gets the
        update of ``members[which[i]]`` (None: none, the base's own blocks).

        The first call learns the input sets; where linears share one, it runs again with
        them, so that its vectors are every later call's bit for bit (one A product per
        set and one per linear round differently on some CPUs' kernels)."""
        if self.sets is None:
            alone = tuple((name,) for name in self.names)
            lasts, seen = self._run(states, mask, members, which, alone, learn=True)
            self.sets = input_sets(seen, self.names)
            if self.sets == alone:
                return lasts
        return self._run(states, mask, members, which, self.sets, learn=False)[0]

    def _run(self, states: Tensor, mask: Tensor, members: Sequence[LoraFactors | None],
             which: Tensor | Sequence[int], sets: Sets, learn: bool
             ) -> tuple[Tensor, list[tuple[str, Tensor]] | None]:
        """One pass of the blocks under ``sets``; the last states and, when ``learn``, the
        ``(linear, input)`` pairs the wrapped linears saw."""
        layout = Layout(sets, self.names, max(m.rank for m in members if m is not None),
                        states.dtype)
        call = _Call(layout, self.rows(members, which, layout, states.device), learn)
        token = _CALL.set(call)
        try:
            lasts = self.head(states, mask)
        finally:
            _CALL.reset(token)
        return lasts, call.seen

    def rows(self, members: Sequence[LoraFactors | None], which: Tensor | Sequence[int],
             layout: Layout, device: torch.device) -> list[Tensor]:
        """Per piece of ``layout``, the rows' factors: ``(B, in, n·r)`` for each input set,
        then ``(B, r, out)`` for each linear, views into one buffer built by one ``cat``;
        with a single member, its own pieces as ``(in, n·r)`` and ``(r, out)`` matrices
        (every row the same adapter: no per-row copies, plain matmuls)."""
        dims = _dims(next(m for m in members if m is not None))
        packs = [self.pieces(m, layout, dims, device) for m in members]
        if len(packs) == 1:
            return [piece.view(shape) for piece, shape in
                    zip(packs[0], layout.shapes(dims), strict=True)]
        rows = which.tolist() if isinstance(which, Tensor) else list(which)
        flat = torch.cat([packs[g][p] for p in range(len(packs[0])) for g in rows])
        views, offset = [], 0
        for height, width in layout.shapes(dims):
            size = len(rows) * height * width
            views.append(flat[offset: offset + size].view(len(rows), height, width))
            offset += size
        return views

    def gathered_bytes(self, members: Sequence[LoraFactors | None], rows: int,
                       dtype: torch.dtype) -> int:
        """The bytes :meth:`rows` gathers for ``rows`` rows of ``members`` in ``dtype`` (each
        row's pieces under the group's layout, the same total whatever the input sets; none
        for a single member, whose pieces are used as they are): working memory a memory
        budget counts while the pass runs."""
        present = [m for m in members if m is not None]
        if len(members) < 2 or not present:
            return 0
        layout = Layout(tuple((name,) for name in self.names), self.names,
                        max(m.rank for m in present), dtype)
        pieces = layout.shapes(_dims(present[0]))
        return rows * dtype.itemsize * sum(height * width for height, width in pieces)

    def pieces(self, factors: LoraFactors | None, layout: Layout,
               dims: dict[str, tuple[int, int]], device: torch.device) -> list[Tensor]:
        """An adapter's (None: the base's zero) pieces under ``layout`` (:func:`pack`),
        packed once and kept while the adapter lives (one layout each: the latest)."""
        with self._lock:
            kept = self._zeros.get(layout) if factors is None else self._packed.get(factors)
        if kept is not None and kept[0] == layout and kept[1][0].device == device:
            return kept[1]
        with torch.inference_mode(False), torch.no_grad():  # usable by any later call
            made = pack(factors, layout, dims, device)
        with self._lock:
            if factors is None:
                self._zeros = {layout: (layout, made)}
            else:
                self._packed[factors] = (layout, made)
        return made


class OneLora(nn.Module):
    """One plain LoRA adapter on the base's own top-k blocks: a :class:`GroupedLora` pass
    whose every row is that adapter's (plain matmuls, no per-row copies).

    This is how an unmerged LoRA head runs in the inference engine: it owns nothing but
    its factors (a few hundred KB), shares the grouped view's blocks with every other
    adapter of its shape, and is built by reading one safetensors file, ~20x faster than
    wrapping copies of the blocks in PEFT's LoRA layers (docs/many-adapters.md).
    """

    def __init__(self, grouped: GroupedLora, factors: LoraFactors) -> None:
        super().__init__()
        if factors.shape != (grouped.head.k, grouped.names):
            raise ValueError(f"factors of shape {factors.shape} on a grouped view of "
                             f"{(grouped.head.k, grouped.names)}")
        self.grouped, self.factors = grouped, factors

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        """Block L−k's inputs ``(B, T, d)`` + mask -> last states under the adapter."""
        return self.grouped(states, mask, [self.factors], ())


def _dims(factors: LoraFactors) -> dict[str, tuple[int, int]]:
    """``(in, out)`` of each linear an adapter's factors wrap."""
    return {name: (a.shape[0], b.shape[1]) for name, (a, b) in factors.factors.items()}


def input_sets(seen: Sequence[tuple[str, Tensor]], names: Sequence[str]) -> Sets:
    """The linears of ``names`` partitioned by the tensor each received in one call
    (``seen``: ``(linear, input)`` in call order); every linear alone where one received
    two different tensors or none (then nothing is shared)."""
    by_input: dict[int, list[str]] = {}
    got: dict[str, int] = {}
    for name, x in seen:
        if got.setdefault(name, id(x)) != id(x):
            return tuple((n,) for n in names)
        members = by_input.setdefault(id(x), [])
        if name not in members:
            members.append(name)
    if set(got) != set(names):
        return tuple((n,) for n in names)
    return tuple(tuple(members) for members in by_input.values())
