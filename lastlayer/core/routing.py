"""Routing signatures: which domain adapter a text belongs to, from states the trunk computes.

Every top-k adapter leaves blocks ``0 … L−k−1`` as the base has them, so the input states
of block ``L−k`` are the same for the base and all its adapters. An inference engine that
runs the shared bottom once per batch therefore has them for free; routing a text is then
a few dot products, with no extra forward pass.

A :class:`RoutingSignature` describes one adapter's training corpus in that space: the
masked mean of block ``L−k``'s input states of (a sample of) its documents, standardised
per dimension with the corpus's own mean and standard deviation, and summarised by k-means
centroids. A text's *similarity* to the domain is ``typical / distance``: its root-mean-
square standardised distance to the nearest centroid, relative to that of a typical
unseen document of the corpus (so 1.0 is "as close as a usual document of the domain", on
the same scale for every domain). Unseen means calibration documents kept out of the
centroids: the ``threshold`` is a low quantile of their similarities, so about that
fraction of new in-domain texts fall below it, whatever the corpus.

Why not cosine: a decoder's hidden states carry a few huge outlier dimensions (SmolLM2's
block-26 inputs: one dimension averages ~790 against a median magnitude of ~2), so raw
cosines of all texts are close to 1; centring on the domain's own mean fixes that but
then texts from *other* domains point anywhere and often score high. The standardised
distance keeps both the outliers and far texts in check, and needs nothing but the
domain's own documents (no other adapter's corpus, no global statistics).

:func:`assign` picks, per text, the most similar domain among those whose threshold it
passes, or None (the base) when it passes none.

This module needs numpy and safetensors only; :func:`signature_for_texts` imports torch
lazily to run the bottom of the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lastlayer import artifact
from lastlayer.artifact import ROUTING_METRIC

METRIC = ROUTING_METRIC
"""The similarity the signatures of this lastlayer use (stored in each file)."""

DEFAULT_CENTROIDS = 16
DEFAULT_QUANTILE = 0.05
DEFAULT_CALIBRATION = 0.25
DEFAULT_MAX_DOCS = 1000


@dataclass(frozen=True, eq=False)
class RoutingSignature:
    """What a domain looks like at the input of its adapter's first block.

    Attributes:
        layer: The 0-based index of the block whose *input* states are pooled: ``L − k``
            for an adapter on the top ``k`` of ``L`` blocks (``hidden_states[L-k]``).
        centroids: ``(C, d)`` float32 k-means centroids, in standardised coordinates
            (``(x − mean) / scale``).
        threshold: A text whose similarity is below it is far from this domain.
        mean: ``(d,)`` float32 per-dimension mean of the corpus's pooled states.
        scale: ``(d,)`` float32 per-dimension standard deviation (floored, see
            :func:`signature_from_states`).
        typical_distance: The median distance of the calibration documents to their
            nearest centroid; similarity is ``typical_distance / distance``.
        num_documents: Documents the signature was computed from.
        quantile: The fraction of calibration documents below ``threshold``.
        metric: The similarity's name (:data:`METRIC`).
    """

    layer: int
    centroids: np.ndarray
    threshold: float
    mean: np.ndarray
    scale: np.ndarray
    typical_distance: float
    num_documents: int
    quantile: float = DEFAULT_QUANTILE
    metric: str = METRIC

    @property
    def dim(self) -> int:
        """The hidden size ``d`` the signature expects."""
        return int(self.centroids.shape[1])

    def distance(self, pooled: np.ndarray) -> np.ndarray:
        """``(N, d)`` pooled states -> ``(N,)`` RMS standardised distance to the nearest
        centroid."""
        pooled = np.asarray(pooled, dtype=np.float32)
        if pooled.ndim != 2 or pooled.shape[1] != self.dim:
            raise ValueError(f"expected pooled states of shape (N, {self.dim}) for block "
                             f"{self.layer}, got {pooled.shape}.")
        z = ((pooled - self.mean) / self.scale).astype(np.float64)
        return _nearest(z, self.centroids.astype(np.float64))[1]

    def similarity(self, pooled: np.ndarray) -> np.ndarray:
        """``(N, d)`` pooled states -> ``(N,)`` similarity (1.0: a typical in-domain text)."""
        return self.typical_distance / np.maximum(self.distance(pooled), 1e-12)


# ---------------------------------------------------------------------------------------
# Building a signature.


def signature_from_states(
    pooled: np.ndarray, layer: int, num_centroids: int = DEFAULT_CENTROIDS,
    quantile: float = DEFAULT_QUANTILE, calibration: float = DEFAULT_CALIBRATION, seed: int = 0,
) -> RoutingSignature:
    """Fit a domain's signature on its documents' pooled block-``layer`` input states.

    The documents are split at random: ``1 − calibration`` of them give the per-dimension
    mean and scale and the k-means centroids; the rest, unseen by those, give the typical
    distance and the threshold, so both describe new texts of the domain rather than the
    fitted ones (which sit closer to their own centroids).

    Args:
        pooled: ``(N, d)`` masked-mean-pooled input states of block ``layer``, N ≥ 4.
        layer: The block index (``L − k``).
        num_centroids: At most this many centroids; fewer with few documents (one per 8
            fitted documents), so that a centroid always summarises several.
        quantile: The fraction of unseen in-domain texts allowed below the threshold.
        calibration: The fraction of documents kept out of the fit to calibrate on.
        seed: Seeds the split and k-means.

    Raises:
        ValueError: Too few documents, or arguments out of range.
    """
    pooled = np.asarray(pooled, dtype=np.float64)
    if pooled.ndim != 2 or len(pooled) < 4:
        raise ValueError(f"a routing signature needs the pooled states of at least 4 "
                         f"documents as an (N, d) array, got shape {pooled.shape}.")
    if not 0 < calibration < 1 or not 0 <= quantile < 1 or num_centroids < 1 or layer < 0:
        raise ValueError("signature_from_states: need 0 < calibration < 1, 0 <= quantile < 1, "
                         "num_centroids >= 1 and layer >= 0.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pooled))
    n_cal = min(max(1, round(calibration * len(pooled))), len(pooled) - 2)
    cal, fit = pooled[order[:n_cal]], pooled[order[n_cal:]]

    mean, scale = fit.mean(0), _scale(fit)
    fit_z, cal_z = (fit - mean) / scale, (cal - mean) / scale
    centroids = kmeans(fit_z, min(num_centroids, max(1, len(fit) // 8)), rng)
    distance = _nearest(cal_z, centroids)[1]
    typical = float(np.median(distance))
    similarity = typical / np.maximum(distance, 1e-12)
    return RoutingSignature(
        layer=int(layer), centroids=centroids.astype(np.float32),
        threshold=float(np.quantile(similarity, quantile)), mean=mean.astype(np.float32),
        scale=scale.astype(np.float32), typical_distance=typical,
        num_documents=len(pooled), quantile=float(quantile),
    )


def _scale(x: np.ndarray) -> np.ndarray:
    """Per-dimension standard deviation, floored at a tenth of the median one: a dimension
    that barely varies within the corpus would otherwise dominate every distance."""
    std = x.std(0)
    return np.maximum(std, 0.1 * float(np.median(std)) + 1e-12)


def _nearest(z: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and RMS distance (over dimensions) to the nearest centroid of each row."""
    sq = ((z * z).sum(1)[:, None] - 2 * z @ centroids.T + (centroids * centroids).sum(1)[None])
    best = sq.argmin(1)
    rms = np.sqrt(np.maximum(sq[np.arange(len(z)), best], 0.0) / z.shape[1])
    return best, rms


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding: ``(N, d)`` -> ``(k, d)`` centroids (k ≤ N)."""
    k = min(k, len(x))
    centroids = [x[rng.integers(len(x))]]
    for _ in range(1, k):  # k-means++: far points are likelier seeds
        d2 = _nearest(x, np.stack(centroids))[1] ** 2
        total = d2.sum()
        probs = d2 / total if total > 0 else None
        centroids.append(x[rng.choice(len(x), p=probs)])
    c = np.stack(centroids)
    for _ in range(iterations):
        labels = _nearest(x, c)[0]
        new = np.stack([x[labels == j].mean(0) if (labels == j).any() else c[j]
                        for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c


def sample_indices(num_docs: int, max_docs: int | None, seed: int) -> np.ndarray:
    """Sorted rows of a seeded sample of at most ``max_docs`` of ``num_docs`` documents."""
    if max_docs is None or max_docs >= num_docs:
        return np.arange(num_docs)
    return np.sort(np.random.default_rng(seed).choice(num_docs, size=max_docs, replace=False))


def signature_for_texts(
    encoder, texts: Sequence[str], k: int, max_docs: int | None = DEFAULT_MAX_DOCS,
    seed: int = 0, batch_size: int = 32, progress: bool = True, **options,
) -> RoutingSignature:
    """The signature of a top-``k`` adapter trained on ``texts``, with ``encoder``'s bottom.

    ``encoder`` may be the base or any top-``k`` adapter on it (they share the bottom).
    Pools block ``L−k``'s inputs of a seeded sample of at most ``max_docs`` texts (at the
    encoder's ``max_length``) and fits :func:`signature_from_states` (``options``: its
    keyword arguments).
    """
    from lastlayer.core.layers import find_layer_stack
    from lastlayer.core.split import base_of, pooled_block_inputs

    rows = sample_indices(len(texts), max_docs, seed)
    pooled = pooled_block_inputs(encoder, [texts[i] for i in rows], k, batch_size, progress,
                                 desc="routing signature")
    layer = find_layer_stack(base_of(encoder.model)).num_layers - k
    return signature_from_states(pooled, layer, seed=seed, **options)


# ---------------------------------------------------------------------------------------
# Routing.


def assign(
    signatures: Mapping[str, RoutingSignature], pooled: Mapping[int, np.ndarray]
) -> list[str | None]:
    """The domain of each text: the most similar one whose threshold it passes, else None.

    Args:
        signatures: Adapter name -> its signature.
        pooled: Block index -> ``(N, d)`` masked-mean-pooled input states of that block for
            the same N texts; needs every ``signature.layer``.

    Returns:
        N names (None: far from every domain, i.e. the base). Ties go to the first name.
    """
    if not signatures:
        sizes = {len(v) for v in pooled.values()}
        return [None] * (sizes.pop() if sizes else 0)
    names = list(signatures)
    missing = sorted({s.layer for s in signatures.values()} - set(pooled))
    if missing:
        raise ValueError(f"assign needs the pooled input states of block(s) {missing}; "
                         f"got blocks {sorted(pooled)}.")
    scores = np.stack([signatures[n].similarity(pooled[signatures[n].layer]) for n in names], 1)
    thresholds = np.array([signatures[n].threshold for n in names])
    scores = np.where(scores >= thresholds, scores, -np.inf)  # (N, D): passing domains only
    best = scores.argmax(1)
    passed = np.isfinite(scores[np.arange(len(scores)), best])
    return [names[j] if ok else None for j, ok in zip(best, passed, strict=True)]


# ---------------------------------------------------------------------------------------
# The file: routing.safetensors inside the artifact folder.


def write_signature(folder: str | Path, sig: RoutingSignature) -> Path:
    """Write ``sig`` as ``routing.safetensors`` in ``folder`` (atomically); return the path."""
    return artifact.write_routing(
        folder, centroids=sig.centroids, mean=sig.mean, scale=sig.scale, layer=sig.layer,
        threshold=sig.threshold, typical_distance=sig.typical_distance,
        num_documents=sig.num_documents, quantile=sig.quantile, metric=sig.metric,
    )


def read_signature(folder: str | Path) -> RoutingSignature | None:
    """The routing signature stored in an artifact folder, or None when it has none.

    Raises:
        ArtifactError: The file is damaged or not one this lastlayer reads.
    """
    parts = artifact.read_routing(folder)
    if parts is None:
        return None
    tensors, meta = parts
    return RoutingSignature(
        layer=int(meta["layer"]), centroids=tensors["centroids"], threshold=meta["threshold"],
        mean=tensors["mean"], scale=tensors["scale"], typical_distance=meta["typical_distance"],
        num_documents=int(meta["num_documents"]), quantile=meta["quantile"],
        metric=meta["metric"],
    )
