"""An adapter's head: its top-k blocks, run from block L−k's inputs, pooled as it was trained.

A :class:`Head` is what the inference engine (:mod:`lastlayer.core.engine`) runs for an
adapter. There are four ways to get one, and each gives the same object type:

- :func:`build_head`: from a saved artifact, on private copies of the base's blocks (the
  adapter's kind builds them, :mod:`lastlayer.core.kinds`); what ``eval``, ``probe``,
  ``export``, ``embed``, ``serve`` and the ``Embedder`` run;
- :func:`compact_head`: a plain LoRA artifact's factors alone, run on the base's own
  blocks (no copies, no PEFT layers): how the ``Embedder`` keeps LoRA heads unmerged;
- :func:`trained_head`: from a model the adapter is still attached to for training
  (training's own trainable copy); what training measures ``eval.json`` with, so its
  numbers come from the head the ``Embedder`` would run, on the same blocks it saves;
- :func:`model_head`: a model's own top-k blocks, whatever it carries (the base: the
  "before" of training's table).

Training measures the held-out sample twice (the base before, the adapter after) and the
bottom L−k blocks are the base's both times, so it embeds through a head while keeping
block L−k's inputs (:func:`embed_keeping_inputs`) and later runs the trained head on those
inputs alone (:func:`embed_from_inputs`). Batches come from
:meth:`~lastlayer.core.encoder.Encoder.encode` in both passes, so the cached inputs line
up with the texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from lastlayer.artifact import ArtifactMeta
from lastlayer.core.encoder import POOLINGS, Encoder
from lastlayer.core.grouped import GroupedLora, LoraFactors, OneLora, read_factors
from lastlayer.core.kinds import kind_named
from lastlayer.core.kinds.common import top_blocks
from lastlayer.core.split import BottomRunner, TopKHead


def pooled(states: Tensor, mask: Tensor, pooling: str, normalize: bool) -> Tensor:
    """Last token states ``(B, T, d)`` -> ``(B, d)`` float32 vectors, pooled by ``pooling``
    and (``normalize``) scaled to unit length."""
    vectors = POOLINGS[pooling](states, mask).float()
    return nn.functional.normalize(vectors, dim=-1) if normalize else vectors


@dataclass(frozen=True)
class Head:
    """An adapter as the engine runs it: its private top-k blocks and how it embeds.

    Attributes:
        module: Runs the private blocks over the base's masks, positions and final norm
            (a :class:`TopKHead`), or a compact LoRA head's factors on the base's own
            blocks (a :class:`~lastlayer.core.grouped.OneLora`).
        blocks: The private blocks L−k … L−1 (the adapter applied to copies of the
            base's); none for a compact head.
        top_k: k.
        pooling, normalize, max_length: The adapter's own embedding settings.
        merged: Plain blocks (merged LoRA, the full kind's trained copies) rather than
            LoRA layers around the base's weights.
        lora: A plain LoRA adapter's factors (from its artifact), with which the engine
            runs it in one pass with other adapters of its shape
            (:mod:`lastlayer.core.grouped`); None: it always runs its own blocks.
    """

    module: nn.Module
    blocks: tuple[nn.Module, ...]
    top_k: int
    pooling: str
    normalize: bool
    max_length: int
    merged: bool
    lora: LoraFactors | None = None

    def embed(self, states: Tensor, mask: Tensor) -> Tensor:
        """Block L−k's inputs ``(B, T, d)`` + mask -> ``(B, d)`` vectors, as the adapter
        embeds (its pooling and normalisation)."""
        return pooled(self.module(states, mask), mask, self.pooling, self.normalize)


def _head(base: nn.Module, blocks: Sequence[nn.Module], pooling: str, normalize: bool,
          max_length: int, merged: bool, lora: LoraFactors | None = None) -> Head:
    top_k = len(blocks)
    return Head(TopKHead(base, top_k, blocks=blocks), tuple(blocks), top_k, pooling,
                normalize, max_length, merged, lora)


def build_head(base: nn.Module, folder: str | Path, meta: ArtifactMeta, merge: bool) -> Head:
    """The head of the artifact at ``folder`` (already validated) on ``base``, built once.

    ``merge`` applies to LoRA only (the full kind's blocks are always plain blocks). A
    plain LoRA adapter's factors are read too, merged or not (a few hundred KB), so it can
    share a pass with other adapters of its shape.
    """
    kind = kind_named(meta.kind)
    blocks = kind.private_blocks(base, folder, meta.top_k, merge)
    emb = meta.embedding
    lora = read_factors(base, folder, meta.top_k) if meta.kind == "lora" else None
    return _head(base, blocks, emb.pooling, emb.normalize, emb.max_length,
                 merge or kind.always_merged, lora)


def compact_head(grouped: GroupedLora, factors: LoraFactors, meta: ArtifactMeta) -> Head:
    """An unmerged plain LoRA head that owns only its ``factors`` (from
    :func:`~lastlayer.core.grouped.read_factors`): it runs them on ``grouped``, the engine's
    view of the base's top-k blocks for adapters of their shape (:class:`OneLora`)."""
    emb = meta.embedding
    return Head(OneLora(grouped, factors), (), factors.top_k, emb.pooling, emb.normalize,
                emb.max_length, merged=False, lora=factors)


def trained_head(encoder: Encoder, kind: str, top_k: int) -> Head:
    """The head of the ``kind`` adapter attached to ``encoder.model`` for training.

    The kind picks the trained blocks out of the attached model
    (``private_blocks_from_model``: the modules training updates, unmerged, not copies);
    they run over the model's masks, positions and final norm, pooled by the encoder's
    settings (the recipe's, which the artifact records).
    """
    plugin = kind_named(kind)
    blocks = plugin.private_blocks_from_model(encoder.model, top_k)
    return _head(encoder.model, blocks, encoder.pooling, encoder.normalize,
                 encoder.max_length, merged=plugin.always_merged)


def model_head(encoder: Encoder, top_k: int) -> Head:
    """``encoder.model``'s own top-k blocks as a head, pooled by the encoder's settings: the
    base's, or (an adapter attached) the blocks as they are wrapped, the very computation
    of the model's forward from block L−k up."""
    blocks = top_blocks(encoder.model, top_k)
    return _head(encoder.model, blocks, encoder.pooling, encoder.normalize,
                 encoder.max_length, merged=True)


def embed_keeping_inputs(encoder: Encoder, texts: Sequence[str], head: Head,
                         batch_size: int = 32, desc: str = "embed"
                         ) -> tuple[Tensor, list[Tensor]]:
    """Embed ``texts`` with the base's bottom and ``head``, keeping block L−k's inputs.

    Returns:
        ``(embeddings (N, d), inputs)``, one inputs tensor per batch; pass the texts and
        the inputs, unchanged, to :func:`embed_from_inputs`.
    """
    bottom = BottomRunner(encoder.model, head.top_k).eval()
    head.module.eval()
    inputs: list[Tensor] = []

    def embed(batch: dict[str, Tensor]) -> Tensor:
        inputs.append(bottom(batch))
        return head.embed(inputs[-1], batch["attention_mask"])

    return encoder.encode(texts, batch_size, desc=desc, embed=embed), inputs


def embed_from_inputs(encoder: Encoder, texts: Sequence[str], inputs: list[Tensor],
                      head: Head, batch_size: int = 32, desc: str = "embed") -> Tensor:
    """Embed ``texts`` running only ``head`` on block L−k's ``inputs``.

    ``texts``, ``batch_size`` and the tokenizer settings must be those
    :func:`embed_keeping_inputs` kept ``inputs`` with, so every batch lines up.
    """
    head.module.eval()
    batches = iter(inputs)

    def embed(batch: dict[str, Tensor]) -> Tensor:
        return head.embed(next(batches), batch["attention_mask"])

    return encoder.encode(texts, batch_size, desc=desc, embed=embed)
