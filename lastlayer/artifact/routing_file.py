"""``routing.safetensors``: the file format of an adapter's routing signature, read and written.

The file holds the signature that ``lastlayer.core.routing`` computes: tensors
``centroids`` (C, d), ``mean`` (d,) and ``scale`` (d,), float32, and string metadata
``format`` (:data:`ROUTING_FORMAT`), ``metric`` (:data:`ROUTING_METRIC`), ``layer``,
``threshold``, ``typical_distance``, ``num_documents`` and ``quantile``. Only this module
knows that layout; it needs numpy and safetensors, never torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lastlayer.artifact.atomic import atomic_path
from lastlayer.artifact.layout import ROUTING, ArtifactError

ROUTING_FORMAT = "lastlayer-routing/1"
ROUTING_METRIC = "standardized-euclidean"


def write_routing(
    folder: str | Path, *, centroids: Any, mean: Any, scale: Any, layer: int,
    threshold: float, typical_distance: float, num_documents: int, quantile: float,
    metric: str = ROUTING_METRIC,
) -> Path:
    """Write a routing signature as ``routing.safetensors`` in ``folder`` (atomically).

    Numbers are stored as text that reads back exactly (``repr`` of floats).

    Returns:
        The file's path.
    """
    import numpy as np
    from safetensors.numpy import save_file

    path = Path(folder) / ROUTING
    tensors = {"centroids": centroids, "mean": mean, "scale": scale}
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    metadata = {
        "format": ROUTING_FORMAT, "layer": str(layer),
        "threshold": repr(float(threshold)),
        "typical_distance": repr(float(typical_distance)),
        "num_documents": str(num_documents), "quantile": repr(float(quantile)),
        "metric": metric,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_routing(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The validated content of an artifact's ``routing.safetensors``, or None without one.

    Returns:
        ``(tensors as numpy arrays, metadata with numbers parsed)``.

    Raises:
        ArtifactError: The file is truncated, corrupt, incomplete or inconsistent.
    """
    from safetensors import SafetensorError, safe_open

    from lastlayer.artifact.safetensors_check import check_safetensors

    path = Path(folder) / ROUTING
    if not path.is_file():
        return None
    fix = "delete it (routing then ignores this adapter) or write it again"
    check_safetensors(path)  # the header, proven sound before any tensor is read
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{path}: truncated or corrupt safetensors file ({err}); "
                            f"{fix}.") from None

    def fail(why: str) -> ArtifactError:
        return ArtifactError(f"{path}: {why}; {fix}.")

    meta = _metadata(raw, fail)
    _check_tensors(tensors, fail)
    return tensors, meta


def _metadata(raw: dict[str, str], fail) -> dict[str, Any]:
    """The metadata with its numbers parsed and checked."""
    import numpy as np

    if raw.get("format") != ROUTING_FORMAT:
        raise fail(f"not a routing signature of this lastlayer (format {raw.get('format')!r}, "
                   f"expected {ROUTING_FORMAT!r})")
    if raw.get("metric") != ROUTING_METRIC:
        raise fail(f"unknown similarity {raw.get('metric')!r} (this lastlayer computes "
                   f"{ROUTING_METRIC!r})")
    parsers = {"layer": int, "num_documents": int, "threshold": float,
               "typical_distance": float, "quantile": float}
    meta: dict[str, Any] = {"format": raw["format"], "metric": raw["metric"]}
    for key, parse in parsers.items():
        try:
            meta[key] = parse(raw[key])
        except (KeyError, ValueError):
            raise fail(f"metadata {key} is missing or not a number ({raw.get(key)!r})") from None
    if meta["layer"] < 0 or meta["num_documents"] < 1 or not 0 <= meta["quantile"] < 1 \
            or not np.isfinite(meta["threshold"]) or not meta["typical_distance"] > 0:
        raise fail(f"metadata out of range ({meta})")
    return meta


def _check_tensors(tensors: dict[str, Any], fail) -> None:
    """Three finite float32 tensors of matching shapes, the scale positive."""
    import numpy as np

    if set(tensors) != {"centroids", "mean", "scale"}:
        raise fail(f"expected tensors centroids, mean and scale, found {sorted(tensors)}")
    centroids, mean, scale = tensors["centroids"], tensors["mean"], tensors["scale"]
    d = mean.shape[0] if mean.ndim == 1 else -1
    if centroids.ndim != 2 or centroids.shape[0] < 1 or centroids.shape[1] != d \
            or scale.shape != (d,):
        raise fail(f"inconsistent shapes: centroids {centroids.shape}, mean {mean.shape}, "
                   f"scale {scale.shape}")
    if any(t.dtype != np.float32 or not np.isfinite(t).all() for t in tensors.values()) \
            or not (scale > 0).all():
        raise fail("tensors must be finite float32 and the scale positive")

