"""Many LoRA adapters of one shape in one pass: the base's top-k blocks run once over all
their rows, each row's own low-rank update added on the way (Punica's BGMV, with ``bmm``).

A batch whose rows go to N different adapters would otherwise run N heads, each reading
its own copy of k blocks of weights for a few rows: N times the weight traffic of a
single-adapter batch, and N forwards. But LoRA adapters of the same k on one base share
every weight except their factors: ``y = x Wᵀ + s · (x Aᵀ) Bᵀ``. So the engine runs the
base's own top-k blocks once over every row of the group (one matmul per linear for all
of them, the weights read once), and around each target linear adds, per row, that row's
adapter's update: its ``A`` and ``s·B`` gathered per row into ``(rows, in, r)`` and
``(rows, r, out)`` and applied with two ``torch.bmm``. That costs ``2·r·(in + out)``
FLOPs per token and linear on top of ``2·in·out`` (about 3 % at r = 8, d = 384), and
reads each adapter's factors (a few hundred KB) instead of its blocks (MBs).

The factors come from the artifact's own files (:func:`read_factors`), so a merged head
(the fast single-adapter path) can join a group too. Only plain LoRA qualifies (no DoRA,
bias, rank or alpha patterns, saved modules, ...); any other adapter keeps its own head.
Rows for the base join a group with zero factors.

The per-row factors of a call reach the wrapped linears through a context variable, so
the grouped view, built once per (k, target linears), is shared by every thread while
each call sees its own rows. Nothing here changes the base (views and structural copies,
:mod:`lastlayer.core.split`).
"""

from __future__ import annotations

import contextvars
import json
import math
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


@dataclass(frozen=True)
class LoraFactors:
    """A plain LoRA adapter's factors, by linear inside its top-k blocks.

    Attributes:
        top_k: k.
        factors: ``"j.sub.name"`` (block ``j`` of the k, then the linear's name inside the
            block) -> ``(Aᵀ (in, r), s·Bᵀ (r, out))``, float32, contiguous.
    """

    top_k: int
    factors: dict[str, tuple[Tensor, Tensor]]

    @property
    def shape(self) -> tuple[int, tuple[str, ...]]:
        """What a grouped pass depends on: k and the wrapped linears."""
        return self.top_k, tuple(sorted(self.factors))


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
    return LoraFactors(top_k, {
        name: (p["A"].float().t().contiguous(), (p["B"].float() * scale).t().contiguous())
        for name, p in pairs.items()})


_ROWS: contextvars.ContextVar[dict[str, tuple[Tensor, Tensor]] | None] = \
    contextvars.ContextVar("lastlayer_grouped_rows", default=None)


class RowLora(nn.Module):
    """A base linear plus, per row of its input, that row's adapter's low-rank update."""

    def __init__(self, linear: nn.Module, name: str) -> None:
        super().__init__()
        self.linear, self.name = linear, name

    def forward(self, x: Tensor) -> Tensor:
        out = self.linear(x)
        rows = _ROWS.get()
        if rows is None:  # outside a grouped call: the base linear alone
            return out
        a, b = rows[self.name]  # (B, in, r), (B, r, out)
        low = torch.bmm(x, a.to(x.dtype)).to(out.dtype)
        if torch.is_grad_enabled():
            return torch.baddbmm(out, low, b.to(out.dtype))
        # in place: a new (B, T, out) tensor for the sum costs as much as both products
        return out.baddbmm_(low, b.to(out.dtype))


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

    def forward(self, states: Tensor, mask: Tensor, members: Sequence[LoraFactors | None],
                which: Tensor) -> Tensor:
        """Block L−k's inputs ``(B, T, d)`` + mask -> last states; row ``i`` gets the
        update of ``members[which[i]]`` (None: none, the base's own blocks)."""
        token = _ROWS.set({name: _gathered(name, members, which) for name in self.names})
        try:
            return self.head(states, mask)
        finally:
            _ROWS.reset(token)


def _gathered(name: str, members: Sequence[LoraFactors | None], which: Tensor
              ) -> tuple[Tensor, Tensor]:
    """Per row, the factors of linear ``name``: ``(B, in, r)``, ``(B, r, out)``, ranks
    padded with zeros to the largest (the base's rows: all zeros)."""
    given = [m.factors[name] for m in members if m is not None]
    rank = max(a.shape[1] for a, _ in given)
    n_in, n_out = given[0][0].shape[0], given[0][1].shape[1]
    a_all = torch.zeros((len(members), n_in, rank), device=which.device)
    b_all = torch.zeros((len(members), rank, n_out), device=which.device)
    for i, member in enumerate(members):
        if member is not None:
            a, b = member.factors[name]
            a_all[i, :, : a.shape[1]] = a
            b_all[i, : b.shape[0]] = b
    return a_all.index_select(0, which), b_all.index_select(0, which)
