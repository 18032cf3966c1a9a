"""The benchmark's markdown: the ranked table, each metric's leader, and the header's notes on
cells made by other plugin code."""
from __future__ import annotations

import numpy as np

from recbole_onevision.benchmark.stats import METRICS, QUALITY, significance


def pinned_note(pinned: dict[str, str], results: dict[tuple[str, str], list[dict]]) -> str:
    """The header's word on rows made by other plugin code than this checkout's (``--report_code``)."""
    if not pinned:
        return ""
    def made_at(model):
        gits = sorted({r.get("plugin_git") or "git unrecorded" for (_, m), runs in results.items() if m == model
                       for r in runs})
        return f"{model} {pinned[model]}" + (f" at {', '.join(gits)}" if gits else " (no cell found)")
    return ("\n\n**Rows of other plugin code** (--report_code; their cells were made by that code, not this "
            "checkout's): " + "; ".join(made_at(m) for m in pinned) + ".")


def other_code_note(elsewhere: dict[str, tuple[set[str], set[str]]]) -> str:
    """Where results of the missing cells from other code are (``--report`` mixes code only as
    ``--report_code`` says)."""
    if not elsewhere:
        return ""
    made = "; ".join(f"{', '.join(sorted(models))} {code}" + (f" at {', '.join(sorted(gits - {''}))}" if gits - {""} else "")
                     for code, (models, gits) in sorted(elsewhere.items(), key=lambda kv: str(kv[0])))
    return (f" Results of other plugin code exist for some of these cells ({made}); to see them, run the "
            "report in a checkout of that code, or pin a model's rows to it with --report_code MODEL=DIGEST.")


def ranked_per_dataset(rows: dict, metric: str) -> dict[str, list[tuple[str, dict]]]:
    """{dataset: [(model, row), ...]} in the order of ``rows``' datasets, models by mean ``metric``, best first."""
    return {dataset: sorted(((m, r) for (d, m), r in rows.items() if d == dataset), key=lambda mr: -np.mean(mr[1][metric]))
            for dataset in dict.fromkeys(d for d, _ in rows)}


def markdown(rows: dict, header: str) -> str:
    """One table; per dataset the models are ranked by mean test QUALITY, and each model's gap to
    the best one and to the next one down is tested (the steps of the ranking that hold)."""
    lines = [header, "", "| dataset | model | seeds | " + " | ".join(METRICS)
             + " | train (min) | latency p50 / p95 (ms) | peak memory (GB) | vs best | vs next |",
             "|---" * (len(METRICS) + 8) + "|"]
    for dataset, ranked in ranked_per_dataset(rows, QUALITY).items():
        best = ranked[0][1]
        for i, (model, r) in enumerate(ranked):
            cells = [f"{np.mean(r[m]):.4f}" + (f" ± {np.std(r[m], ddof=1):.4f}" if r["seeds"] > 1 else "")
                     for m in METRICS]
            vs_best = "best" if i == 0 else significance(r[QUALITY], best[QUALITY])
            vs_next = (f"{significance(r[QUALITY], ranked[i + 1][1][QUALITY])} over {ranked[i + 1][0]}"
                       if i + 1 < len(ranked) else "last")
            lines.append(f"| {dataset} | {model} | {r['seeds']} | " + " | ".join(cells)
                         + f" | {r['train_min']:.1f} | {r['p50']:.2f} / {r['p95']:.2f} | {r['peak_gb']:.2f}"
                         + f" | {vs_best} | {vs_next} |")
    lines += ["", f"Rows ranked by mean test {QUALITY}. vs best / vs next: Welch's t-test on test {QUALITY} "
              "against the dataset's best model / the model ranked next below (needs 2+ seeds on both sides; "
              "significant: p < 0.05).", "", *metric_leaders(rows)]
    return "\n".join(lines) + "\n"


def metric_leaders(rows: dict) -> list[str]:
    """Per dataset and metric, the leading model and its gap to the runner-up on that metric,
    tested: the ranking by QUALITY need not hold for recall, and a claim per metric needs its test.
    Empty when no dataset has two models."""
    lines = []
    leaders = {metric: ranked_per_dataset(rows, metric) for metric in METRICS}
    for dataset in leaders[QUALITY]:
        for metric in METRICS:
            if len(leaders[metric][dataset]) < 2:
                continue
            (first, a), (second, b) = leaders[metric][dataset][:2]
            lead, base = np.mean(a[metric]) - np.mean(b[metric]), np.mean(b[metric])
            relative = f" ({lead / base:+.1%})" if base > 0 else ""
            lines.append(f"| {dataset} | {metric} | {first} | {second} | {lead:+.4f}{relative} "
                         f"| {significance(a[metric], b[metric])} |")
    if not lines:
        return []
    return ["Per metric: the best model on each test metric and its lead over the runner-up on that metric "
            "(Welch's t-test, as above).", "",
            "| dataset | metric | best | runner-up | lead | lead vs runner-up |", "|---" * 6 + "|", *lines]
