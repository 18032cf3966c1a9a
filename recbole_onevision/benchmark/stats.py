"""Numbers over seeds: per-cell summaries and Welch's t-test between two models' seeds."""
from __future__ import annotations

import numpy as np

METRICS = ["recall@5", "recall@10", "ndcg@5", "ndcg@10"]
QUALITY = "ndcg@10"  # the plot's y axis and the significance tests' metric


def welch_p(a: list[float], b: list[float]) -> float | None:
    if len(a) < 2 or len(b) < 2:
        return None
    import warnings

    from scipy.stats import ttest_ind

    if np.std(a) == 0 and np.std(b) == 0:
        return 0.0 if np.mean(a) != np.mean(b) else 1.0
    with warnings.catch_warnings():  # near-identical seeds (a model that learns nothing) warn
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_ind(a, b, equal_var=False).pvalue)


def summarise(results: dict[tuple[str, str], list[dict]]) -> dict[tuple[str, str], dict]:
    rows = {}
    for key, runs in results.items():
        tests = [r["test_result"] for r in runs]
        latency = [r["latency_ms"] for r in runs if r.get("latency_ms")]
        rows[key] = {
            "seeds": len(runs),
            **{m: [t[m] for t in tests] for m in METRICS},
            "train_min": float(np.mean([r["train_seconds"] for r in runs])) / 60,
            "p50": float(np.mean([lat["p50"] for lat in latency])) if latency else float("nan"),
            "p95": float(np.mean([lat["p95"] for lat in latency])) if latency else float("nan"),
            "peak_gb": float(max(r.get("peak_rss_gb", float("nan")) for r in runs)),
        }
    return rows


def significance(a: list[float], b: list[float]) -> str:
    p = welch_p(a, b)
    if p is None:
        return "single seed"
    return f"{'significant' if p < 0.05 else 'not significant'} ({'p<0.001' if p < 0.001 else f'p={p:.3f}'})"
