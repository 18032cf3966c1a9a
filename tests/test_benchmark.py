"""The one-command benchmark: a quick grid runs, writes its table and plot, and resumes."""
import json
import os
import re
import shutil

import pytest

from recbole_onevision.benchmark import grid
from recbole_onevision.benchmark.__main__ import main
from recbole_onevision.benchmark.report import markdown
from recbole_onevision.benchmark.stats import METRICS, welch_p
from recbole_onevision.preprocess import mvshop
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
    assert "Results of other plugin code exist for some of these cells (Pop 0123456789ab at git abc1234)" in (out / "benchmark.md").read_text()
    # other plugin code makes other cells: results of older code are never reused
    assert grid.code_digest() == grid.code_digest()
    same = grid.cell_dir(str(out), "tinyshop", "MCA", 1, ["--x=1"], "code-a")
    assert same == grid.cell_dir(str(out), "tinyshop", "MCA", 1, ["--x=1"], "code-a")
    assert same != grid.cell_dir(str(out), "tinyshop", "MCA", 1, ["--x=1"], "code-b")
    assert same != grid.cell_dir(str(out), "tinyshop", "MCA", 1, ["--x=2"], "code-a")


@pytest.mark.parametrize("models, datasets, extra, message", [
    ("VisualKNN,SASRek", "tinyshop", [], "unknown model 'SASRek'"),
    ("VisualKNN", "tinyshop,nowhere", [], "dataset 'nowhere': .*nowhere.inter not found"),
    ("VisualKNN,MCA", "tinyshop", ["--MCA.epochz=3"], "epochz"),
    ("VisualKNN", "tinyshop", ["--latency_queries=-5"], "--latency_queries: expected 0 or more .* got -5"),
])
def test_the_grid_is_checked_before_its_first_cell(tmp_path, capsys, models, datasets, extra, message):
    mvshop.generate("mini", str(tmp_path), spec=TINY)
    os.rename(tmp_path / "mvshop-mini", tmp_path / "tinyshop")
    for f in (tmp_path / "tinyshop").iterdir():
        f.rename(f.with_name(f.name.replace("mvshop-mini", "tinyshop")))
    out = tmp_path / "out"
    argv = ["--models", models, "--datasets", datasets, "--out", str(out), f"--data_path={tmp_path}",
            f"--config_files={dataset_properties_file('mvshop-mini')}", "--state=WARNING", *extra]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (out / "cells").exists()  # no cell ran


def test_code_digest_follows_the_files_each_model_runs(tmp_path, monkeypatch):
    copy = tmp_path / "recbole_onevision"
    shutil.copytree(grid.PLUGIN_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(grid, "PLUGIN_DIR", str(copy))
    monkeypatch.setattr(grid, "MODEL_DIR", str(copy / "model"))
    # a model that is a package: an absolute and a relative import inside it, a shared module outside
    package = copy / "model" / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("from recbole_onevision.model.fakepkg.core import Fake\n")
    (package / "core.py").write_text("from .helper import width\nfrom recbole_onevision.model.trie import SIDTrie\n")
    (package / "helper.py").write_text("width = 1\n")
    with open(copy / "model" / "__init__.py", "a") as f:
        f.write("from recbole_onevision.model.fakepkg import Fake\n")
    models = ("OneVision", "MCA", "VisualKNN", "SASRec", "Fake")
    digests = lambda: {m: grid.code_digest(m) for m in models}  # noqa: E731

    def changed_by(path):
        before = digests()
        with open(copy / path, "a") as f:
            f.write("\n# changed\n")
        after = digests()
        return {m for m in models if after[m] != before[m]}

    assert grid.model_files("Fake") == {str(package / f) for f in ("__init__.py", "core.py", "helper.py")} | {
        str(copy / "model" / "trie.py")}
    assert changed_by("model/fakepkg/helper.py") == {"Fake"}  # a package's modules are its model's alone
    assert changed_by("model/onevision/__init__.py") == {"OneVision"}
    assert changed_by("model/onevision/decoder.py") == {"OneVision"}
    assert changed_by("properties/model/OneVision.yaml") == {"OneVision"}
    # imported by OneVision only through its package's visual_similarity import: followed transitively
    assert changed_by("model/visual_similarity.py") == {"OneVision", "MCA", "VisualKNN"}
    assert changed_by("model/visual_knn.py") == {"MCA", "VisualKNN"}
    assert changed_by("model/packed_encoder.py") == {"OneVision"}
    assert changed_by("model/trie.py") == {"OneVision", "MCA", "VisualKNN", "Fake"}  # via visual_similarity.py
    assert changed_by("trainer.py") == set(models)  # shared code: every model's cells are new
    assert changed_by("properties/overall.yaml") == set(models)
    assert changed_by("benchmark/report.py") == set()  # the benchmark itself is no result's code


def test_welch_p_separates_clear_differences_only():
    assert welch_p([0.5, 0.51, 0.49], [0.30, 0.31, 0.29]) < 0.01
    assert welch_p([0.5, 0.52, 0.48], [0.51, 0.49, 0.50]) > 0.5
    assert welch_p([0.5], [0.4]) is None  # one seed: no test


def test_report_ranks_models_and_tests_each_step_of_the_ranking():
    def row(ndcg):
        return {"seeds": len(ndcg), **{m: list(ndcg) for m in METRICS},
                "train_min": 1.0, "p50": 1.0, "p95": 2.0, "peak_gb": 1.0}

    rows = {("d", "Close"): row([0.300, 0.305, 0.295]), ("d", "Best"): row([0.50, 0.51, 0.49]),
            ("d", "Near"): row([0.302, 0.296, 0.304]), ("d", "One"): row([0.1])}
    ranking = markdown(rows, "# t").split("Per metric")[0]
    table = [line for line in ranking.splitlines() if line.startswith("| d |")]
    assert [line.split(" | ")[1] for line in table] == ["Best", "Near", "Close", "One"]  # by mean ndcg@10
    verdicts = [line.split(" | ")[-2:] for line in table]
    assert verdicts[0] == ["best", "significant (p<0.001) over Near |"]
    assert verdicts[1][0].startswith("significant") and verdicts[1][1].startswith("not significant")
    assert verdicts[1][1].endswith("over Close |")
    assert verdicts[2][1] == "single seed over One |" and verdicts[3] == ["single seed", "last |"]


def test_report_tests_each_metric_leader_against_its_runner_up():
    """NDCG and recall can rank models differently: each metric's leader is named and tested."""
    def row(recall, ndcg):
        return {"seeds": len(ndcg), **{m: list(recall if m.startswith("recall") else ndcg) for m in METRICS},
                "train_min": 1.0, "p50": 1.0, "p95": 2.0, "peak_gb": 1.0}

    rows = {("d", "Ranker"): row([0.080, 0.079, 0.081], [0.044, 0.045, 0.046]),
            ("d", "Recaller"): row([0.090, 0.089, 0.091], [0.041, 0.046, 0.043]),
            ("d", "Pop"): row([0.01, 0.01, 0.01], [0.005, 0.005, 0.005]),
            ("alone", "Pop"): row([0.01], [0.005])}
    leaders = {line.split(" | ")[1]: line.split(" | ")[2:] for line in markdown(rows, "# t").splitlines()
               if line.startswith("| d | recall") or line.startswith("| d | ndcg")}
    assert leaders["recall@10"][:3] == ["Recaller", "Ranker", "+0.0100 (+12.5%)"]
    assert leaders["recall@10"][3].startswith("significant (p<0.001)")
    assert leaders["ndcg@10"][:2] == ["Ranker", "Recaller"] and leaders["ndcg@10"][3].startswith("not significant")
    assert "| alone | recall" not in markdown(rows, "# t")  # one model: nothing to lead
    assert "Per metric" not in markdown({("alone", "Pop"): rows[("alone", "Pop")]}, "# t")


def test_report_pins_other_code_for_named_models_and_scopes_overrides(tmp_path, capsys):
    """A changed model is reported next to baselines made by earlier code, named as such."""
    out, base = str(tmp_path), ["--latency_queries=5"]

    def cell(model, overrides, code, ndcg):
        folder = grid.cell_dir(out, "d", model, 1, overrides, code)
        os.makedirs(folder)
        result = {"test_result": dict.fromkeys(METRICS, ndcg), "train_seconds": 60.0,
                  "latency_ms": {"p50": 1.0, "p95": 2.0}, "peak_rss_gb": 1.0, "plugin_code": code}
        with open(os.path.join(folder, "result.json"), "w") as f:
            json.dump(result, f)

    cell("OneVision", base + ["--dense_readout=history"], grid.code_digest("OneVision"), 0.04)
    cell("SASRec", base, "0123456789ab", 0.03)
    argv = ["--report", "--models", "OneVision,SASRec", "--datasets", "d", "--seeds", "1", "--out", out,
            "--latency_queries", "5", "--OneVision.dense_readout=history"]
    # without the pin SASRec's cell is other code: named, not used
    assert set(main(argv)) == {("d", "OneVision")}
    assert "SASRec / seed 1" in (tmp_path / "benchmark.md").read_text()
    assert "(SASRec 0123456789ab)" in (tmp_path / "benchmark.md").read_text()
    rows = main(argv + ["--report_code", "SASRec=0123456789ab"])
    assert set(rows) == {("d", "OneVision"), ("d", "SASRec")} and rows[("d", "SASRec")]["ndcg@10"] == [0.03]
    report = (tmp_path / "benchmark.md").read_text()
    assert "**Rows of other plugin code**" in report and "SASRec 0123456789ab at git unrecorded" in report
    assert "not run yet" not in report
    # a scoped override reaches its model only: SASRec's cell under the plain override is not found
    assert set(main([*argv[:-1], "--dense_readout=history", "--report_code", "SASRec=0123456789ab"])) == {("d", "OneVision")}
    for bad in (["--Nope.x=1"], ["--report_code", "SASRec=xyz"], ["--report_code", "Pop=0123456789ab"]):
        with pytest.raises(SystemExit):
            main(argv + bad)
    with pytest.raises(SystemExit):  # cells are only ever run by this checkout's code
        main([a for a in argv if a != "--report"] + ["--report_code", "SASRec=0123456789ab"])
    assert "--report_code only goes with --report" in capsys.readouterr().err
