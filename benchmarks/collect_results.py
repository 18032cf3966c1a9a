"""Print a markdown table of the result JSONs ``run.py`` wrote (default: saved/*.json).

    python benchmarks/collect_results.py [saved/*.json ...]

One row per (dataset, model): the newest file wins. Columns: test R@5, R@10, N@5, N@10,
the best validation NDCG@10 and the training time.
"""
import glob
import json
import os
import sys

METRICS = ["recall@5", "recall@10", "ndcg@5", "ndcg@10"]


def main(paths):
    newest = {}
    for path in sorted(paths, key=os.path.getmtime):
        with open(path) as f:
            result = json.load(f)
        newest[(result["dataset"], result["model"])] = result
    print("| dataset | model | R@5 | R@10 | N@5 | N@10 | valid N@10 | train (min) |")
    print("|---|---|---|---|---|---|---|---|")
    for (dataset, model), r in sorted(newest.items()):
        test = r["test_result"]
        cells = [f"{test[m]:.4f}" for m in METRICS]
        print(f"| {dataset} | {model} | " + " | ".join(cells)
              + f" | {r['best_valid_result'].get('ndcg@10', float('nan')):.4f} | {r['train_seconds'] / 60:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or glob.glob("saved/*.json"))
