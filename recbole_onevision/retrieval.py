"""Cross-view retrieval by nearest neighbour: the baseline every tokenizer has to beat.

    python -m recbole_onevision.retrieval --dataset eth80 [--data_path dataset]

For each query photo, items are ranked by their best catalogue view (max cosine over the
item's views); Recall@K is the share of queries whose pictured product is in the top K.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from recbole_onevision.model.visual_similarity import best_view_similarity


def nearest_view_scores(queries: np.ndarray, views: np.ndarray, view_item: np.ndarray, n_items: int,
                        batch: int = 4096) -> np.ndarray:
    """(queries, items) float32 max cosine over each item's views, -inf for items without views:
    :func:`~recbole_onevision.model.visual_similarity.best_view_similarity` on raw (unnormalised)
    embedding arrays, in their own precision, ``batch`` queries at a time to bound memory."""
    unit = lambda x: F.normalize(torch.from_numpy(np.asarray(x)), dim=1)  # noqa: E731
    views_t, view_item_t = unit(views), torch.from_numpy(np.asarray(view_item, dtype=np.int64))
    queries_t = unit(queries)
    out = np.empty((len(queries), n_items), dtype=np.float32)
    for start in range(0, len(queries), batch):
        out[start:start + batch] = best_view_similarity(queries_t[start:start + batch], views_t,
                                                        view_item_t, n_items).float().numpy()
    return out


def recall_at(scores: np.ndarray, targets: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """Share of rows whose target ranks in the top k (ties count against the target)."""
    own = scores[np.arange(len(targets)), targets][:, None]
    rank = (scores >= own).sum(1)
    return {f"recall@{k}": float((rank <= k).mean()) for k in ks}


def load(folder: str, name: str):
    base = os.path.join(folder, name)
    read = lambda ext: pd.read_csv(f"{base}.{ext}", sep="\t", dtype=str, keep_default_na=False)  # noqa: E731
    views, queries = read("view"), read("query")
    item_ids = pd.Index(pd.unique(views["item_id:token"]))
    known = queries["product_id:token"].isin(item_ids)
    if not known.any():
        raise ValueError(f"{base}.query: no query names a product that has catalogue views")
    return (np.load(f"{base}.query.npy")[known.to_numpy()],
            item_ids.get_indexer(queries.loc[known, "product_id:token"]),
            np.load(f"{base}.view.npy"), item_ids.get_indexer(views["item_id:token"]), len(item_ids))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recbole_onevision.retrieval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_path", default="dataset")
    args = parser.parse_args(argv)
    queries, targets, views, view_item, n_items = load(os.path.join(args.data_path, args.dataset), args.dataset)
    result = recall_at(nearest_view_scores(queries, views, view_item, n_items), targets)
    print(f"{args.dataset}: {len(queries)} query photos, {len(views)} catalogue views of {n_items} items "
          f"({views.shape[1]}-d), raw-embedding nearest neighbour\n")
    print("| recall@1 | recall@5 |\n|---|---|")
    print(f"| {result['recall@1']:.4f} | {result['recall@5']:.4f} |")


if __name__ == "__main__":
    main()
