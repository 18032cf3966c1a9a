"""How much each model's validation score overstates its test score, and why it can differ.

    python benchmarks/valid_test_gap.py [--out results/benchmark-amazon] [--datasets Beauty,Toys]

Under leave-one-out the validation target is each user's second-to-last item and the test target
the last one, later in time. Where the catalogue's popularity drifts, a model that leans on
popular items gains more on validation than on test. Prints, per dataset:

* the share of validation and test targets among the 10% of items most interacted with in
  training (the leave-one-out training part of ``dataset/<name>/<name>.inter``), and
* for every benchmark cell group (model, plugin code) under ``--out``: mean best-valid and test
  NDCG@10 over its seeds and their ratio.
"""
import argparse
import glob
import json
import os
from collections import defaultdict

import numpy as np
import pandas as pd


def target_popularity(dataset: str, data_path: str = "dataset") -> tuple[float, float]:
    """Shares of (valid, test) targets among the top decile of training items by count."""
    path = os.path.join(data_path, dataset, f"{dataset}.inter")
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: not found (convert the dataset first, see the README)")
    inter = pd.read_csv(path, sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    missing = sorted({"user_id", "item_id", "timestamp"} - set(inter.columns))
    if missing:
        raise SystemExit(f"{path}: expected columns user_id, item_id and timestamp; missing {', '.join(missing)}")
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable")
    position = inter.groupby("user_id").cumcount(ascending=False)  # 0: last (test), 1: valid
    counts = inter[position >= 2]["item_id"].value_counts()
    top = set(counts.index[:len(counts) // 10])
    share = lambda p: float(inter[position == p]["item_id"].isin(top).mean())  # noqa: E731
    return share(1), share(0)


def cell_groups(out: str, dataset: str) -> dict[tuple[str, str], list[dict]]:
    groups = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(out, "cells", dataset, "*", "*", "result.json"))):
        with open(path) as f:
            result = json.load(f)
        groups[(result["model"], result.get("plugin_code", "?"))].append(result)
    return groups


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join("results", "benchmark-amazon"))
    parser.add_argument("--datasets", default="Beauty,Toys")
    parser.add_argument("--data_path", default="dataset")
    args = parser.parse_args(argv)
    for dataset in args.datasets.split(","):
        valid_share, test_share = target_popularity(dataset, args.data_path)
        print(f"\n{dataset}: targets among the top 10% training items: valid {valid_share:.3f}, "
              f"test {test_share:.3f}\n")
        print("| model | plugin code | seeds | valid N@10 | test N@10 | valid / test |")
        print("|---|---|---|---|---|---|")
        rows = []
        for (model, code), results in cell_groups(args.out, dataset).items():
            valid = np.mean([r["best_valid_result"]["ndcg@10"] for r in results])
            test = np.mean([r["test_result"]["ndcg@10"] for r in results])
            rows.append((test, f"| {model} | {code} | {len(results)} | {valid:.4f} | {test:.4f} | {valid / test:.2f} |"))
        print("\n".join(row for _, row in sorted(rows, reverse=True)))


if __name__ == "__main__":
    main()
