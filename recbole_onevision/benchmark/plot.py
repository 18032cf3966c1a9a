"""The benchmark's plot: quality against single-query latency."""
from __future__ import annotations

import os

import numpy as np

from recbole_onevision.benchmark.stats import QUALITY


def plot(rows: dict, path: str) -> bool:
    """Quality against latency, one marker per (dataset, model); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    datasets = {dataset for dataset, _ in rows}
    heights = [np.mean(r[QUALITY]) for r in rows.values()]
    span = (max(heights) - min(heights)) or 1.0
    placed: list[float] = []
    for ((dataset, model), r), y in zip(rows.items(), heights):
        ax.errorbar(r["p50"], y, yerr=np.std(r[QUALITY]) if r["seeds"] > 1 else None, fmt="o", capsize=3)
        # labels of points at about the same height go one under the other, not on top
        below = sum(abs(y - other) < 0.04 * span for other in placed)
        placed.append(y)
        ax.annotate(model if len(datasets) == 1 else f"{model} ({dataset})", (r["p50"], y),
                    textcoords="offset points", xytext=(5, 3 - 11 * below), fontsize=8)
    if len(datasets) == 1:
        ax.set_title(next(iter(datasets)))
    ax.set_xscale("log")
    ax.margins(x=0.15)  # room for the rightmost point's label
    ax.set_xlabel("single-query latency p50 (ms, log scale)")
    ax.set_ylabel(f"test {QUALITY}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return True
