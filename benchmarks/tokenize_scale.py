"""VRQ tokenization time and peak memory per dataset, plus our k-means against scikit-learn's.

    python benchmarks/tokenize_scale.py [--datasets mvshop-mini mvshop-large] [--max_queries 500]
                                        [--kmeans-compare] [--threads 1]

Each dataset is tokenized in its own child process (`python -m recbole_onevision.tokenizer`,
cache off), from loading the atomic files to the SID report; the table gives the child's wall
time, the tokenizer's fit time and the child's peak resident memory (ru_maxrss). Datasets run
smallest first, so each peak is that dataset's own. ``--kmeans-compare`` times one level of
k-means (200k x 128 points, 256 centroids, 25 iterations) with ours (torch) and with
scikit-learn's KMeans and MiniBatchKMeans on the same data, side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time


def tokenize_child(dataset: str, max_queries: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        start = time.time()
        child = subprocess.run([sys.executable, "-m", "recbole_onevision.tokenizer", "--dataset", dataset,
                                "--vrq_cache=False", "--show_progress=False", f"--max_queries={max_queries}",
                                "--json", out], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if child.returncode:
            sys.exit(f"tokenizing {dataset} failed:\n{child.stderr[-3000:]}")
        wall = time.time() - start
        with open(out) as f:
            report = json.load(f)["VRQ"]
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20  # KiB on Linux
    return {"dataset": dataset, "items": report["items"], "codebooks": "x".join(map(str, report["codebook_sizes"])),
            "wall_s": wall, "fit_s": report["fit_seconds"], "peak_gb": peak_gb,
            "icr_before": report["ICR_before_uniqueness"]}


def kmeans_compare(threads: int) -> list[tuple[str, float]]:
    import numpy as np
    import torch
    from sklearn.cluster import KMeans, MiniBatchKMeans

    from recbole_onevision.tokenizer.kmeans import kmeans

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(512, 128)).astype(np.float32)
    x = centres[rng.integers(0, 512, 200_000)] + 0.3 * rng.normal(size=(200_000, 128)).astype(np.float32)
    rows = []
    for name, fit in (
        ("ours (torch, k-means++ + Lloyd)", lambda: kmeans(torch.from_numpy(x), 256, iters=25, seed=0, sample=None)),
        ("sklearn KMeans (n_init=1)", lambda: KMeans(256, n_init=1, max_iter=25, random_state=0).fit(x)),
        ("sklearn MiniBatchKMeans", lambda: MiniBatchKMeans(256, n_init=1, max_iter=25, random_state=0,
                                                            batch_size=4096).fit(x)),
    ):
        start = time.time()
        fit()
        rows.append((name, time.time() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mvshop-mini"])
    parser.add_argument("--max_queries", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kmeans-compare", action="store_true")
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {args.threads} thread(s)\n")
    print("| dataset | items | codebooks | wall (s) | VRQ fit (s) | peak RSS (GB) | unique before uniqueness level |")
    print("|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        r = tokenize_child(dataset, args.max_queries, args.threads)
        print(f"| {r['dataset']} | {r['items']:,} | {r['codebooks']} | {r['wall_s']:.0f} | {r['fit_s']:.0f} | "
              f"{r['peak_gb']:.2f} | {r['icr_before']:.3f} |", flush=True)
    if args.kmeans_compare:
        rows = kmeans_compare(args.threads)
        ours = rows[0][1]
        print("\n| k-means, 200k x 128 points, 256 centroids, 25 iterations | seconds | vs ours |\n|---|---|---|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.1f} | {seconds / ours:.2f}x |")


if __name__ == "__main__":
    main()
