"""VRQ tokenization time and peak memory per dataset, end to end.

    python benchmarks/tokenize_scale.py [--datasets mvshop-mini mvshop-large] [--max_queries 500] [--threads 2]

Each dataset is tokenized in its own child process (`python -m recbole_onevision.tokenizer`,
cache off), from loading the atomic files to the SID report; the table gives the child's wall
time, the tokenizer's fit time and the child's peak resident memory (ru_maxrss). Datasets run
smallest first, so each peak is that dataset's own. k-means variants on one dataset's features:
benchmarks/kmeans_scale.py.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mvshop-mini"])
    parser.add_argument("--max_queries", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {args.threads} thread(s)\n")
    print("| dataset | items | codebooks | wall (s) | VRQ fit (s) | peak RSS (GB) | unique before uniqueness level |")
    print("|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        r = tokenize_child(dataset, args.max_queries, args.threads)
        print(f"| {r['dataset']} | {r['items']:,} | {r['codebooks']} | {r['wall_s']:.0f} | {r['fit_s']:.0f} | "
              f"{r['peak_gb']:.2f} | {r['icr_before']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
