"""The one-command benchmark: a quick grid runs, writes its table and plot, and resumes."""
import json
import os
import shutil

from recbole_onevision import benchmark
from recbole_onevision.benchmark import main, markdown, welch_p
from recbole_onevision.data import mvshop
from recbole_onevision.registry import dataset_properties_file

TINY = mvshop.MVShopSpec(n_items=300, n_users=40, sessions_per_user=8, branching=(3, 2, 2), n_brands=12)


def test_quick_grid_writes_table_and_plot_and_resumes(tmp_path, capsys):
    mvshop.generate("mini", str(tmp_path), spec=TINY)
    os.rename(tmp_path / "mvshop-mini", tmp_path / "tinyshop")  # run() regenerates folders named mvshop-*
    for f in (tmp_path / "tinyshop").iterdir():
        f.rename(f.with_name(f.name.replace("mvshop-mini", "tinyshop")))
    out = tmp_path / "out"
    argv = ["--quick", "--models", "VisualKNN,MCA", "--datasets", "tinyshop", "--seeds", "1,2", "--out", str(out),
            f"--data_path={tmp_path}", f"--config_files={dataset_properties_file('mvshop-mini')}", "--state=WARNING"]
    rows = main(argv)
    assert set(rows) == {("tinyshop", "VisualKNN"), ("tinyshop", "MCA")}
    assert all(r["seeds"] == 2 and r["p50"] > 0 and r["peak_gb"] > 0 for r in rows.values())
    report = (out / "benchmark.md").read_text()
    assert "| tinyshop | VisualKNN | 2 |" in report and "| tinyshop | MCA | 2 |" in report and "±" in report
    assert (out / "benchmark.png").stat().st_size > 1000
    # VisualKNN learns nothing: the same ranking whatever the seed
    assert rows[("tinyshop", "VisualKNN")]["ndcg@10"][0] == rows[("tinyshop", "VisualKNN")]["ndcg@10"][1]
    # a second call finds every cell done and runs nothing
    logs = sorted((out / "cells").rglob("run.log"))
    stamps = [p.stat().st_mtime for p in logs]
    capsys.readouterr()
    main(argv)
    assert capsys.readouterr().out.count("done before, reusing") == 4
    assert [p.stat().st_mtime for p in logs] == stamps
    # --report runs nothing: the finished cells' table, the missing ones named
    partial = main([*argv[:2], "VisualKNN,MCA,Pop", *argv[3:], "--report"])
    assert set(partial) == set(rows) and [p.stat().st_mtime for p in logs] == stamps
    assert "2 of 6 cells not run yet:** tinyshop / Pop / seed 1; tinyshop / Pop / seed 2." in (out / "benchmark.md").read_text()
    # a missing cell run by other code is pointed to, never used; new cells record their git commit
    assert all("plugin_git" in json.loads(p.read_text()) for p in (out / "cells").rglob("result.json"))
    old = out / "cells" / "tinyshop" / "Pop" / "seed1-0ldc0de0"
    old.mkdir(parents=True)
    (old / "result.json").write_text(json.dumps({"plugin_code": "0123456789ab", "plugin_git": "git abc1234"}))
    assert set(main([*argv[:2], "VisualKNN,MCA,Pop", *argv[3:], "--report"])) == set(rows)
    assert "Results of other plugin code exist for some of these cells (0123456789ab at git abc1234)" in (out / "benchmark.md").read_text()
    # other plugin code makes other cells: results of older code are never reused
    assert benchmark.code_digest() == benchmark.code_digest()
    same = benchmark.cell_dir(str(out), "tinyshop", "MCA", 1, ["--x=1"], "code-a")
    assert same == benchmark.cell_dir(str(out), "tinyshop", "MCA", 1, ["--x=1"], "code-a")
    assert same != benchmark.cell_dir(str(out), "tinyshop", "MCA", 1, ["--x=1"], "code-b")
    assert same != benchmark.cell_dir(str(out), "tinyshop", "MCA", 1, ["--x=2"], "code-a")


def test_code_digest_follows_the_files_each_model_runs(tmp_path, monkeypatch):
    copy = tmp_path / "recbole_onevision"
    shutil.copytree(benchmark.PLUGIN_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(benchmark, "PLUGIN_DIR", str(copy))
    monkeypatch.setattr(benchmark, "MODEL_DIR", str(copy / "model"))
    models = ("OneVision", "MCA", "VisualKNN", "SASRec")
    digests = lambda: {m: benchmark.code_digest(m) for m in models}  # noqa: E731

    def changed_by(path):
        before = digests()
        with open(copy / path, "a") as f:
            f.write("\n# changed\n")
        after = digests()
        return {m for m in models if after[m] != before[m]}

    assert changed_by("model/onevision.py") == {"OneVision"}
    assert changed_by("properties/model/OneVision.yaml") == {"OneVision"}
    # imported by OneVision only through catalogue_similarity.py: followed transitively
    assert changed_by("model/visual_knn.py") == {"OneVision", "MCA", "VisualKNN"}
    assert changed_by("trainer.py") == set(models)  # shared code: every model's cells are new
    assert changed_by("properties/overall.yaml") == set(models)


def test_welch_p_separates_clear_differences_only():
    assert welch_p([0.5, 0.51, 0.49], [0.30, 0.31, 0.29]) < 0.01
    assert welch_p([0.5, 0.52, 0.48], [0.51, 0.49, 0.50]) > 0.5
    assert welch_p([0.5], [0.4]) is None  # one seed: no test


def test_report_ranks_models_and_tests_each_step_of_the_ranking():
    def row(ndcg):
        return {"seeds": len(ndcg), **{m: list(ndcg) for m in benchmark.METRICS},
                "train_min": 1.0, "p50": 1.0, "p95": 2.0, "peak_gb": 1.0}

    rows = {("d", "Close"): row([0.300, 0.305, 0.295]), ("d", "Best"): row([0.50, 0.51, 0.49]),
            ("d", "Near"): row([0.302, 0.296, 0.304]), ("d", "One"): row([0.1])}
    table = [line for line in markdown(rows, "# t").splitlines() if line.startswith("| d |")]
    assert [line.split(" | ")[1] for line in table] == ["Best", "Near", "Close", "One"]  # by mean ndcg@10
    verdicts = [line.split(" | ")[-2:] for line in table]
    assert verdicts[0] == ["best", "significant (p=0.000) over Near |"]
    assert verdicts[1][0].startswith("significant") and verdicts[1][1].startswith("not significant")
    assert verdicts[1][1].endswith("over Close |")
    assert verdicts[2][1] == "single seed over One |" and verdicts[3] == ["single seed", "last |"]
