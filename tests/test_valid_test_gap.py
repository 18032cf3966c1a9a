"""benchmarks/valid_test_gap.py: the popularity shares of leave-one-out targets and the cell table."""
import json
import os

import pytest

from onevision_support import load_benchmark


@pytest.fixture(scope="module")
def gap():
    return load_benchmark("valid_test_gap")


def write_inter(root, rows):
    os.makedirs(root / "Drift")
    lines = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"{u}\t{i}\t{t}" for u, i, t in rows]
    (root / "Drift" / "Drift.inter").write_text("\n".join(lines) + "\n")


def test_target_shares_follow_time_order_not_file_order(gap, tmp_path):
    # items 1..20 in training; item 1 the most popular. Every user's valid target (second-to-last
    # by time) is item 1, the test target (last) an item never trained on; rows out of time order
    rows = []
    for user in range(1, 11):
        rows += [(user, 30 + user, 9), (user, 2 + user, 1), (user, 1, 8), (user, 1, 0)]
    rows += [(99, item, t) for t, item in enumerate(range(2, 21))] + [(99, 1, 50), (99, 40, 51)]
    write_inter(tmp_path, rows)
    valid, test = gap.target_popularity("Drift", str(tmp_path))
    assert (valid, test) == (1.0, 0.0)


def test_missing_dataset_names_the_file(gap, tmp_path):
    with pytest.raises(SystemExit, match="Nope.inter: not found"):
        gap.target_popularity("Nope", str(tmp_path))


def test_missing_column_is_named(gap, tmp_path):
    os.makedirs(tmp_path / "Drift")
    (tmp_path / "Drift" / "Drift.inter").write_text("user_id:token\titem_id:token\n1\t1\n")
    with pytest.raises(SystemExit, match="Drift.inter: expected columns .*; missing timestamp"):
        gap.target_popularity("Drift", str(tmp_path))


def test_table_groups_cells_by_model_and_code(gap, tmp_path, capsys):
    write_inter(tmp_path / "data", [(1, 1, 0), (1, 2, 1), (1, 3, 2), (2, 1, 0), (2, 2, 1), (2, 3, 2)])
    for model, seed, valid, test in (("A", 1, 0.06, 0.04), ("A", 2, 0.04, 0.04), ("B", 1, 0.03, 0.01)):
        folder = tmp_path / "out" / "cells" / "Drift" / model / f"seed{seed}-x"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({
            "model": model, "plugin_code": "c0de", "best_valid_result": {"ndcg@10": valid},
            "test_result": {"ndcg@10": test}}))
    gap.main(["--out", str(tmp_path / "out"), "--datasets", "Drift", "--data_path", str(tmp_path / "data")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| A") or line.startswith("| B")]
    assert rows == ["| A | c0de | 2 | 0.0500 | 0.0400 | 1.25 |", "| B | c0de | 1 | 0.0300 | 0.0100 | 3.00 |"]
