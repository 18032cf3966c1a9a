"""VRQ's residual k-means with other k-means on one dataset's fused item features, in one run.

    python benchmarks/kmeans_scale.py --dataset mvshop-large [--variants lloyd-sample,lloyd-all,...]
                                      [--max_queries 500] [--threads 2] [--json out.json]

The dataset is loaded and VRQ's features (alignment head, fused item feature) are fitted once;
then each k-means variant quantizes the same rows (all residual levels and the distinct last
level) and the SID report is made from its codes. Per variant: quantization time, peak memory
above the process's before it, mean squared residual after each level (the inertia per item, over
all items), ICR, view consistency and cross-view recall through the codes on held-out photos.
Every variant assigns all rows to its centroids with the same exact nearest-centroid code, so
only how the centroids are fitted differs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_onevision.io import atomic_write_text  # noqa: E402
from recbole_onevision.tokenizer import build_tokenizer, quantize  # noqa: E402
from recbole_onevision.tokenizer.__main__ import load  # noqa: E402
from recbole_onevision.tokenizer.inputs import gather  # noqa: E402
from recbole_onevision.tokenizer.kmeans import kmeans, nearest  # noqa: E402
from recbole_onevision.tokenizer.report import sid_report  # noqa: E402


def lloyd(rows):
    return lambda x, k, iters, seed, sample=None: kmeans(x, k, iters=iters, seed=seed, sample=rows)


def minibatch(x, k, iters, seed, sample=None):
    from sklearn.cluster import MiniBatchKMeans

    fitted = MiniBatchKMeans(k, n_init=1, max_iter=iters, batch_size=4096, random_state=seed).fit(x.numpy())
    centroids = torch.from_numpy(fitted.cluster_centers_.astype(np.float32))
    return centroids, nearest(x, centroids)[0]


def faiss_kmeans(rows=None, per_centroid=None):
    """faiss's k-means fitted on its own sample of ``rows`` rows or ``per_centroid`` x k rows
    (neither: every row)."""
    def fit(x, k, iters, seed, sample=None):
        import faiss

        limit = per_centroid or -(-min(rows or len(x), len(x)) // k)
        km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, max_points_per_centroid=limit)
        km.train(np.ascontiguousarray(x.numpy(), dtype=np.float32))
        centroids = torch.from_numpy(km.centroids.copy())
        return centroids, nearest(x, centroids)[0]
    return fit


VARIANTS = {
    "lloyd-sample": ("ours: k-means++ + Lloyd on a 200k-row sample (VRQ's default)", lloyd(200_000)),
    "lloyd-all": ("ours: k-means++ + Lloyd on every row", lloyd(None)),
    "minibatch": ("scikit-learn MiniBatchKMeans, batch 4,096, every row", minibatch),
    "faiss-sample": ("faiss Kmeans on a 200k-row sample", faiss_kmeans(200_000)),
    "faiss-default": ("faiss Kmeans, its default sample (256 rows per centroid)", faiss_kmeans(per_centroid=256)),
    "faiss-all": ("faiss Kmeans on every row", faiss_kmeans(None)),
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 10 ms."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.gb = (self.peak - self.base) / 2 ** 30


def residual_per_level(rows: torch.Tensor, tokenizer) -> list[float]:
    """Mean squared residual of the items after each k-means level (the last, distinct one aside)."""
    residual, out = rows.clone(), []
    codes = tokenizer.item_sid[1:]
    for level in range(tokenizer.params.levels):
        residual -= tokenizer.codebooks[level][codes[:, level]]
        out.append(float((residual * residual).sum(1).mean()))
    return out


def run_variant(name, tokenizer, rows, inputs, max_queries, seed, log):
    label, fit = VARIANTS[name]
    log(f"{name}: quantizing {len(rows):,} rows ({label})")
    with mock.patch.object(quantize, "kmeans", fit), PeakMemory() as memory:
        start = time.perf_counter()
        tokenizer.quantize(rows, inputs.item_num)
        seconds = time.perf_counter() - start
    report = sid_report(tokenizer, inputs, max_queries, seed)
    sid = tokenizer.item_sid[1:].numpy()
    if len(np.unique(sid, axis=0)) != len(sid):
        raise AssertionError(f"{name}: SIDs are not distinct")
    result = {"variant": name, "label": label, "seconds": round(seconds, 1), "peak_gb": round(memory.gb, 2),
              "residual": residual_per_level(rows, tokenizer), "report": report}
    log(f"{name}: {seconds:.1f} s, codes R@1 {report.get('recall_codes', {}).get('R@1')}")
    return result


def table(results: list[dict]) -> str:
    levels = len(results[0]["residual"])
    head = ["k-means", "quantize (s)", "peak memory (GB)"] + [f"residual L{i + 1}" for i in range(levels)]
    head += [f"ICR L{levels - 1}", f"ICR L{levels}", f"largest L1-L{levels} group"]
    head += [f"view consistency L{i + 1}" for i in range(levels)] + ["codes R@1", "codes R@5"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for r in results:
        rep = r["report"]
        cells = [r["label"], f"{r['seconds']:.1f}", f"{r['peak_gb']:.2f}"] + [f"{v:.4f}" for v in r["residual"]]
        cells += [f"{rep['levels'][i]['ICR']:.4f}" for i in (levels - 2, levels - 1)]
        cells.append(str(rep["levels"][levels - 1]["largest_group"]))
        cells += [f"{rep['levels'][i].get('view_consistency', float('nan')):.4f}" for i in range(levels)]
        cells += [f"{rep.get('recall_codes', {}).get(k, float('nan')):.4f}" for k in ("R@1", "R@5")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mvshop-mini")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--max_queries", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2, help="torch, faiss and OpenMP threads")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        parser.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}; expected some of {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    try:
        import faiss
        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        if any(v.startswith("faiss") for v in names):
            parser.error("the faiss variants need faiss-cpu (pip install faiss-cpu)")

    def log(message):
        print(f"[kmeans {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    config, data, splits = load(args.dataset, overrides=["--vrq_cache=False", "--show_progress=False"])
    inputs = gather(data, splits, config)
    loaded = time.perf_counter() - start
    tokenizer = build_tokenizer(config)
    log(f"{args.dataset} loaded in {loaded:.0f} s; fitting VRQ's features")
    start = time.perf_counter()
    with PeakMemory() as memory:
        rows = tokenizer.fit_features(inputs)
    features = time.perf_counter() - start
    log(f"features {tuple(rows.shape)} in {features:.0f} s")
    results = [run_variant(name, tokenizer, rows, inputs, args.max_queries, config["seed"], log) for name in names]
    print(f"# {args.dataset}: {len(rows):,} items, fused feature width {rows.shape[1]}, k-means codebooks "
          f"{'x'.join(map(str, tokenizer.codebook_sizes[:tokenizer.params.levels]))} (+ the distinct last level); "
          f"{time.strftime('%Y-%m-%d %H:%M')}, "
          f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}\n")
    report = results[0]["report"]
    print(f"Loading {loaded:.0f} s; VRQ's features (alignment head, fusion) {features:.0f} s, "
          f"peak memory +{memory.gb:.2f} GB; held-out photos {report.get('heldout_queries', 0)}; R@1 / R@5 "
          f"through the unquantized fused features {report['recall_fused']['R@1']:.4f} / "
          f"{report['recall_fused']['R@5']:.4f}\n")
    print(table(results))
    if args.json:
        atomic_write_text(args.json, json.dumps({"dataset": args.dataset, "load_s": loaded, "features_s": features,
                                                 "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
