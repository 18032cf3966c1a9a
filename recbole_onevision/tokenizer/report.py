"""SID quality, measured on held-out query photos (valid/test interactions) where there are any.

* CUR (codebook utilisation rate, OneSearch): share of a level's codes used by some item;
* ICR (item-to-code rate): share of items whose SID prefix up to a level is theirs alone;
* view consistency: share of held-out query photos whose predicted prefix up to a level equals
  the prefix of the product they show;
* cross-view Recall@1/5 of the pictured product: raw nearest neighbour (best catalogue view),
  the aligned continuous feature (best view), the fused item feature the codes approximate
  (mean aligned view + attributes, unquantized), and the codes (items ranked by the distance
  from the query's feature to their quantized vector, every level with a codebook; where the
  last level is a counter, items sharing the other levels tie and the counter orders them).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from recbole_onevision.model.visual_similarity import best_view_similarity
from recbole_onevision.tokenizer.inputs import TokenizerInputs
from recbole_onevision.tokenizer.quantize import collision_stats, reconstruct


def _ranks(score_fn, targets: torch.Tensor, chunk: int = 64, tiebreak: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each target under ``score_fn(rows) -> (len(rows), items)`` (higher first).

    Ties rank against the target unless ``tiebreak`` (lower first) orders them."""
    ranks = []
    for start in range(0, len(targets), chunk):
        rows = torch.arange(start, min(start + chunk, len(targets)))
        scores = score_fn(rows)
        own = scores[torch.arange(len(rows)), targets[rows]].unsqueeze(1)
        better = scores > own
        if tiebreak is None:
            better |= scores == own
            ranks.append(better.sum(1))
        else:
            tied = (scores == own) & (tiebreak.unsqueeze(0) < tiebreak[targets[rows]].unsqueeze(1))
            ranks.append((better | tied).sum(1) + 1)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def _recall(ranks: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    return {f"R@{k}": float((ranks <= k).float().mean()) for k in ks}


def sid_report(tokenizer, inputs: TokenizerInputs, max_queries: int | None = 2000, seed: int = 0) -> dict:
    """Per-level and overall SID statistics of a fitted tokenizer (see the module docstring)."""
    sid = tokenizer.item_sid[1:].numpy()
    levels = tokenizer.params.levels
    sizes = tokenizer.codebook_sizes
    report = {"items": len(sid), "codebook_sizes": sizes, "levels": []}
    for level in range(levels + 1):
        icr, largest = collision_stats(sid[:, :level + 1])
        report["levels"].append({"level": level + 1, "codes": sizes[level],
                                 "CUR": len(np.unique(sid[:, level])) / sizes[level],
                                 "ICR": icr, "largest_group": largest})
    report["ICR_before_uniqueness"] = report["levels"][levels - 1]["ICR"]
    report["ICR_after_uniqueness"] = report["levels"][levels]["ICR"]

    queries = inputs.heldout_queries
    if inputs.query_embedding is None or not len(queries) or not tokenizer.visual_width:
        report["heldout_queries"] = 0
        return report
    if max_queries is not None and len(queries) > max_queries:
        queries = np.sort(np.random.default_rng(seed).choice(queries, max_queries, replace=False))
    report["heldout_queries"] = len(queries)
    photos = torch.from_numpy(inputs.query_embedding[queries])
    targets = torch.from_numpy(inputs.query_product[queries]).long()
    query_codes = tokenizer.encode_queries(photos).numpy()
    product_codes = tokenizer.item_sid[targets].numpy()
    for level in range(levels):
        same = (query_codes[:, :level + 1] == product_codes[:, :level + 1]).all(1)
        report["levels"][level]["view_consistency"] = float(same.mean())

    n = inputs.item_num
    view_item = torch.from_numpy(inputs.view_item)
    raw_views = F.normalize(torch.from_numpy(inputs.view_embedding), dim=1)
    raw_photos = F.normalize(photos, dim=1)

    def best_view(q_rows, views, rows):
        return best_view_similarity(q_rows[rows], views, view_item, n)

    chunk = max(1, min(64, 2 ** 24 // max(len(view_item), n)))  # bounds a (chunk, views) block
    report["recall_raw_nn"] = _recall(_ranks(lambda r: best_view(raw_photos, raw_views, r), targets, chunk))
    if tokenizer.head is not None:
        aligned_views = tokenizer.visual(torch.from_numpy(inputs.view_embedding))
        aligned_photos = tokenizer.visual(photos)
        report["recall_aligned_nn"] = _recall(
            _ranks(lambda r: best_view(aligned_photos, aligned_views, r), targets, chunk))
    features = tokenizer.query_features(photos)
    # the fused features the codes quantize: what the codes could retrieve at best
    fused = tokenizer.catalogue_features(inputs)
    report["recall_fused"] = _recall(_ranks(_distance_scores(features, fused), targets, chunk))
    quantized = reconstruct(tokenizer.item_sid[:, :len(tokenizer.codebooks)].clamp_min(0), tokenizer.codebooks)
    # rank by codes: items sharing every quantized level tie; the last code orders them
    report["recall_codes"] = _recall(_ranks(_distance_scores(features, quantized), targets, chunk,
                                            tiebreak=tokenizer.item_sid[:, -1]))
    return report


def _distance_scores(features: torch.Tensor, items: torch.Tensor):
    """``rows -> -squared distance`` from those rows of ``features`` to every item row (padding never ranks)."""
    i_sq = (items * items).sum(1)
    i_sq[0] = float("inf")

    def scores(rows):
        f = features[rows]
        return -((f * f).sum(1, keepdim=True) - 2 * f @ items.T + i_sq)
    return scores


def format_reports(reports: dict[str, dict]) -> str:
    """Markdown tables: one column per variant (``reports`` maps a name to a :func:`sid_report`)."""
    names = list(reports)
    first = reports[names[0]]
    rows: list[tuple[str, list[str]]] = []

    def row(label, getter):
        values = []
        for name in names:
            try:
                value = getter(reports[name])
            except (KeyError, IndexError):
                value = None
            values.append("-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value)))
        rows.append((label, values))

    row("items", lambda r: r["items"])
    row("fit seconds", lambda r: r.get("fit_seconds"))
    row("codebook sizes", lambda r: "x".join(map(str, r["codebook_sizes"])))
    for level in range(len(first["levels"])):
        tag = f"L{level + 1}" if level < len(first["levels"]) - 1 else f"L{level + 1} (last, distinct)"
        row(f"{tag} CUR", lambda r, i=level: r["levels"][i]["CUR"])
        row(f"{tag} ICR (prefix unique)", lambda r, i=level: r["levels"][i]["ICR"])
        row(f"{tag} largest group", lambda r, i=level: r["levels"][i]["largest_group"])
        if level < len(first["levels"]) - 1:
            row(f"{tag} view consistency", lambda r, i=level: r["levels"][i].get("view_consistency"))
    row("held-out query photos", lambda r: r["heldout_queries"])
    for key, label in (("recall_raw_nn", "raw NN"), ("recall_aligned_nn", "aligned NN"),
                       ("recall_fused", "fused features"), ("recall_codes", "codes")):
        for k in ("R@1", "R@5"):
            row(f"{label} {k}", lambda r, key=key, k=k: r[key][k])
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
    return "\n".join(lines)
