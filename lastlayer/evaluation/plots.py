"""The layer probe's picture: kNN accuracy per layer, base vs adapted, with weight change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Output: probe.json, probe.png, a terminal table.


def plot_probe(result: dict[str, Any], path: str | Path) -> Path:
    """Draw kNN accuracy per layer (base vs adapted) with weight change bars; save a PNG.

    The base curve carries a ±1 standard-error band (differences inside it are noise);
    trained blocks are shaded, the suggested top-k is marked, and the majority-class rate is
    drawn as the floor that a useless embedding reaches.
    """
    from lastlayer.extras import require

    matplotlib = require("matplotlib", "plot", "lastlayer probe (drawing probe.png)")
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    rows = result["layers"]
    layers = np.array([r["layer"] for r in rows])
    base = np.array([r["base_knn"] for r in rows]) * 100
    adapted = np.array([r["adapted_knn"] for r in rows]) * 100 if result["adapter"] else None
    num_layers, n = result["num_layers"], result["num_documents"]
    best, plateau = result["best_layer"], result["plateau_layer"]
    top_k = result["recommended_top_k"]
    fig, ax = plt.subplots(figsize=(max(7.5, min(14.0, 4.5 + 0.3 * num_layers)), 5.6), dpi=130,
                           layout="constrained")

    back = ax  # shading and bars go on the axes behind the curves
    if adapted is not None:
        back = ax.twinx()
        change = np.array([(r["weight_change"] or 0.0) * 100 for r in rows])
        back.bar(layers, change, width=0.45, color="#dde3e9", edgecolor="#8b96a1", lw=0.8,
                 label="weight change (right axis)")
        back.set_ylabel("relative weight change ||ΔW|| / ||W|| of the block (%)",
                        color="#5f6b77")
        back.tick_params(axis="y", colors="#5f6b77")
        back.set_ylim(0, max(change.max(), 1e-6) * 2.8)  # bars stay low, under the curves
        ax.set_zorder(back.get_zorder() + 1)
        ax.patch.set_visible(False)
    trained = [r["layer"] for r in rows if r["trained"]]
    if trained:
        back.axvspan(min(trained) - 0.5, max(trained) + 0.5, color="#f4a259", alpha=0.18, lw=0,
                     label=f"trained blocks ({result['adapter_kind']}, top-{len(trained)})")

    first = num_layers - top_k + 1  # first hidden layer that the suggested top-k changes
    teal = "#2a9d8f"
    top = ax.get_xaxis_transform()  # x in data, y in axes fraction
    ax.annotate("", xy=(first - 0.45, 0.955), xytext=(num_layers + 0.45, 0.955), xycoords=top,
                arrowprops={"arrowstyle": "|-|", "color": teal, "lw": 1.6,
                            "shrinkA": 0, "shrinkB": 0})
    ax.text((first + num_layers) / 2, 0.965, f"suggested top-k = {top_k}", transform=top,
            ha="center", va="bottom", fontsize=8, color=teal)
    ax.plot([], [], color=teal, lw=1.6, marker="|", ms=8,
            label=f"suggested top-k = {top_k} (base plateau: layer {plateau})")

    floor = result["majority_class_rate"] * 100
    ax.axhline(floor, color="#999999", ls=":", lw=1)
    ax.annotate("majority class", (layers[0], floor), xytext=(2, 3), textcoords="offset points",
                fontsize=8, color="#777777")

    se = np.sqrt(base * (100 - base) / n)
    ax.fill_between(layers, base - se, base + se, color="#3d5a80", alpha=0.12, lw=0,
                    label="base ± 1 SE")
    ax.plot(layers, base, "o-", color="#3d5a80", lw=2, ms=4, label="base", zorder=3)
    ax.plot([best], [base[best]], marker="*", ms=14, color="#3d5a80", zorder=5, ls="none",
            label=f"base peak: layer {best} ({base[best]:.1f}%)")
    label = {"fontsize": 8, "textcoords": "offset points", "va": "center"}
    if adapted is not None:
        differs = np.flatnonzero(adapted != base)  # below the adapter both are the same
        start = max(int(differs[0]) - 1, 0) if len(differs) else 0
        ax.plot(layers[start:], adapted[start:], "o-", color="#d1495b", lw=2, ms=4,
                label="adapted", zorder=4)
        up = adapted[-1] >= base[-1]
        ax.annotate(f"{adapted[-1]:.1f} ({adapted[-1] - base[-1]:+.1f})",
                    (layers[-1], adapted[-1]), xytext=(8, 7 if up else -7), color="#d1495b",
                    **label)
        ax.annotate(f"{base[-1]:.1f}", (layers[-1], base[-1]), xytext=(8, -7 if up else 7),
                    color="#3d5a80", **label)
    else:
        ax.annotate(f"{base[-1]:.1f}", (layers[-1], base[-1]), xytext=(8, 0), color="#3d5a80",
                    **label)

    ax.set_xlabel("layer (0 = embedding output, l = output of the l-th block)")
    ax.set_ylabel(f"kNN accuracy, k={result['k']}, leave-one-out (%)")
    ax.set_xticks(np.arange(0, num_layers + 1, 1 if num_layers <= 16 else 2))
    ax.set_xlim(-0.6, num_layers + 0.6 + max(0.8, 0.07 * num_layers))  # room for the labels
    curves = [base - se, base + se, [floor]] + ([adapted] if adapted is not None else [])
    low, high = min(map(np.min, curves)), max(map(np.max, curves))
    pad = 0.06 * (high - low) + 0.5
    ax.set_ylim(low - pad, high + 2.5 * pad)  # headroom for the top-k bracket
    ax.grid(axis="y", alpha=0.3)
    model = result["base_model"]
    what = f"{model} + adapter {Path(result['adapter']).name}" if result["adapter"] else model
    ax.set_title(
        f"Per-layer kNN accuracy: {what}\n{Path(result['data']).name}: {n} documents, "
        f"{result['num_classes']} classes; {result['pooling']} pooling, "
        f"max_length {result['max_length']}",
        fontsize=10,
    )
    handles, labels = ax.get_legend_handles_labels()
    if back is not ax:
        more = back.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    order = ("base", "base ±", "base peak", "adapted", "trained", "weight", "suggested")

    def rank(i: int) -> int:  # the longest matching prefix wins ("base peak" over "base")
        return max(j for j, prefix in enumerate(order) if labels[i].startswith(prefix))

    keep = sorted(range(len(labels)), key=rank)
    fig.legend([handles[i] for i in keep], [labels[i] for i in keep], ncol=3, fontsize=8,
               loc="outside lower center", frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


