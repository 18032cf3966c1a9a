"""Exact vs HNSW vs IVF recall over MVShop's catalogue views: the cascade's recall stage at scale.

    python benchmarks/ann_recall.py [--dataset mvshop-small] [--large] [--queries 1000]
                                    [--kinds exact,hnsw,ivf] [--threads 1] [--sweep]

For each search: build time, memory (the exact table's buffers; the serialized faiss index,
views included), latency per photo of the recall stage as MCA and VisualKNN run it (photos ->
each item's best-view score -> top ``--recall`` items) with batches of 1 and 256, and the
index's item-level recall@R against exact search (share of the exact top-R items it returns),
plus how many rows came back with fewer than R items. Indexes use the models' defaults
(recbole_onevision/model/ann_recall.py) and are built without the cache, so build times are
real. ``--large`` also runs MVShop large's catalogue (1M items, 3M views), made in memory by the
generator's own functions with its seed (the same views as the generated dataset); its query
photos are the generator's photo transform of random items (the full dataset's sessions are not
needed here).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from recbole_onevision.model.ann_recall import PARAMS, ViewIndex
from recbole_onevision.model.visual_similarity import ViewTable

BLOCK = 32  # exact ground truth in blocks of rows: (rows, items, views per item) floats at a time
SEARCH = {"hnsw": "ef_search", "ivf": "nprobe"}  # the search-time setting --sweep varies
SWEEP = {"hnsw": [600, 2400], "ivf": [32, 64, 256]}


def load_dataset(data_path: str, name: str, queries: int):
    """(views, view_item, n_items, photos) of a dataset's atomic files."""
    folder = os.path.join(data_path, name)
    table = pd.read_csv(os.path.join(folder, f"{name}.view"), sep="\t", dtype=str)
    _, view_item = np.unique(table.iloc[:, 1].to_numpy(), return_inverse=True)
    views = np.load(os.path.join(folder, f"{name}.view.npy"))
    photos = np.load(os.path.join(folder, f"{name}.query.npy"), mmap_mode="r")
    rows = np.random.default_rng(0).choice(len(photos), size=min(queries, len(photos)), replace=False)
    # item ids from 1 (0 is RecBole's padding, without views), as the models see them
    return torch.from_numpy(views), torch.from_numpy(view_item + 1), int(view_item.max()) + 2, \
        torch.from_numpy(np.asarray(photos[np.sort(rows)]))


def make_large(queries: int):
    from recbole_onevision.preprocess import mvshop

    spec = mvshop.SCALES["large"]
    rng = np.random.default_rng(mvshop.DEFAULT_SEED)
    catalogue = mvshop.make_catalogue(spec, rng)
    views = mvshop.catalogue_views(spec, catalogue, rng)
    n = len(catalogue.leaf_of)
    pictured = np.random.default_rng(0).integers(0, n, queries)
    photos = mvshop.query_photos(spec, catalogue, pictured, np.random.default_rng(1))
    view_item = np.repeat(np.arange(n), spec.views_per_item) + 1
    return torch.from_numpy(views), torch.from_numpy(view_item), n + 1, torch.from_numpy(photos)


def recall_stage(search, photos: torch.Tensor, size: int) -> torch.Tensor:
    scores = search(photos)
    scores[:, 0] = float("-inf")
    top = scores.topk(size, dim=1)
    return top.indices.masked_fill(torch.isinf(top.values), -1)  # -1: a slot left empty


def latency_ms(search, photos: torch.Tensor, size: int, batch: int, repeats: int) -> float:
    """Median milliseconds per photo over ``repeats`` batches of ``batch`` photos."""
    times = []
    for n in range(repeats):
        rows = photos[(torch.arange(batch) + n * batch) % len(photos)]
        start = time.perf_counter()
        recall_stage(search, rows, size)
        times.append((time.perf_counter() - start) / batch)
    return 1000 * float(np.median(times))


def run(name, views, view_item, n_items, photos, kinds, size, log, sweep=False) -> list[dict]:
    units, photos = F.normalize(views.float(), dim=1), F.normalize(photos.float(), dim=1)
    log(f"{name}: {len(units)} views, {n_items - 1} items, {len(photos)} query photos")
    start = time.perf_counter()
    table = ViewTable(units, view_item, n_items)
    exact_build = time.perf_counter() - start
    truth = torch.cat([recall_stage(table, photos[i:i + BLOCK], size) for i in range(0, len(photos), BLOCK)])
    rows = []
    for kind in kinds:
        if kind == "exact":
            search, build = table, exact_build
            memory = sum(b.numel() * b.element_size() for b in table.buffers())
            got, settings = truth, "dense best-view table"
            rows.append(measure(name, kind, settings, build, memory, search, truth, got, photos, size, log))
            continue
        start = time.perf_counter()
        index = ViewIndex(units, view_item, n_items, kind, PARAMS[kind], cache_dir=None)
        build = time.perf_counter() - start
        default = index.params[SEARCH[kind]]
        # the default first, then (with --sweep) other search-time settings of the same index
        for value in [default] + (SWEEP[kind] if sweep else []):
            index.params[SEARCH[kind]] = value
            search = lambda p, index=index: index(p, size)  # noqa: E731
            got = torch.cat([recall_stage(search, photos[i:i + 256], size) for i in range(0, len(photos), 256)])
            settings = ", ".join(f"{k}={v}" for k, v in index.params.items()) + f"; {index.views_for(size)} views"
            if kind == "hnsw":
                settings = settings.replace("ef_search=None", f"ef_search=None ({2 * index.views_for(size)})")
            rows.append(measure(name, kind, settings, build, index.memory_bytes(), search, truth, got, photos,
                                size, log))
    return rows


def measure(name, kind, settings, build, memory, search, truth, got, photos, size, log) -> dict:
    hits = [len(set(a.tolist()) & set(b[b >= 0].tolist())) / size for a, b in zip(truth, got)]
    row = {"catalogue": name, "search": kind, "settings": settings, "build_s": build, "memory_mb": memory / 2 ** 20,
           "ms_1": latency_ms(search, photos, size, 1, 200), "ms_256": latency_ms(search, photos, size, 256, 4),
           "recall": float(np.mean(hits)), "short": int(((got < 0).any(1)).sum()), "queries": len(photos)}
    log(f"  {row}")
    return row


def markdown(rows: list[dict], size: int) -> str:
    out = [f"| catalogue | search | settings | build (s) | memory (MB) | ms/photo, batch 1 | ms/photo, batch 256 "
           f"| item recall@{size} vs exact | rows short of {size} items |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['catalogue']} | {r['search']} | {r['settings']} | {r['build_s']:.1f} | {r['memory_mb']:.0f} "
                   f"| {r['ms_1']:.2f} | {r['ms_256']:.3f} | {r['recall']:.4f} | {r['short']} / {r['queries']} |")
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument("--dataset", default="mvshop-small")
    parser.add_argument("--large", action="store_true", help="also MVShop large's catalogue (1M items), in memory")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--recall", type=int, default=100, help="items recalled per photo (MCA's recall_size)")
    parser.add_argument("--kinds", default="exact,hnsw,ivf")
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads (1: steady latencies "
                        "on a shared machine, where idle threads of a second wait their turn)")
    parser.add_argument("--sweep", action="store_true", help="also other ef_search / nprobe values (SWEEP)")
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    log = lambda message: print(message, flush=True)  # noqa: E731
    kinds = args.kinds.split(",")
    rows = []
    if args.dataset:  # --dataset "": MVShop large alone
        rows += run(args.dataset, *load_dataset(args.data_path, args.dataset, args.queries), kinds, args.recall, log,
                    args.sweep)
    if args.large:
        rows += run("mvshop-large (views in memory)", *make_large(args.queries), kinds, args.recall, log, args.sweep)
    table = markdown(rows, args.recall)
    header = (f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {args.threads} threads, "
              f"faiss {faiss.__version__}, torch {torch.__version__}")
    print(f"\n{header}\n\n{table}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(f"{header}\n\n{table}\n")


if __name__ == "__main__":
    main()
