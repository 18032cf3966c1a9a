"""One command for the whole comparison: models x datasets x seeds, one table and one plot.

    python -m recbole_onevision.benchmark --models OneVision,MCA,VisualKNN,SASRec,Pop \\
        --datasets mvshop-mini [--seeds 2020,2021,2022] [--out results/benchmark] [--quick] [--key=value ...]

Every cell (dataset, model, seed) is one ``run.py`` child process (so its peak memory is its
own) that trains, tests and times ``latency_queries`` single-query predictions; its result JSON
is kept under ``<out>/cells/<dataset>/<model>/seed<seed>-<hash>/result.json``, the hash being
of the overrides and of the plugin's code and default configs that the model runs (other plugin
models' files aside). A cell whose JSON exists is not run again, so an interrupted grid resumes
where it stopped (with other overrides or after a change to code the model runs, its cells are
new; changing OneVision does not rerun SASRec). The report
(``<out>/benchmark.md``) holds per dataset and model the test metrics (mean ± std over seeds),
training time, latency p50/p95, peak memory, and, with two or more seeds, whether each model's
difference to the best one and to the next one down the ranking is significant (Welch's t-test,
p < 0.05), and per metric the best model's lead over the runner-up on it, tested the same way;
``<out>/benchmark.png``
plots quality against latency. ``--quick`` is a smoke run: one epoch per stage, a short VRQ
fit, few timed queries. ``--report`` runs nothing and reports the cells finished so far (a grid
too long for one sitting, run a part at a time), naming the missing ones and, where a missing
cell has a result from other plugin code, that code's digest and the git commit it ran at
(recorded in each cell's JSON): a grid belongs to one version of the code, and is reported from
a checkout of it. ``--key=value`` overrides go to every run, ``--Model.key=value`` to that
model's runs only.

A changed model needs no rerun of the baselines: ``--report --report_code SASRec=8a65dad86470``
reports SASRec's cells made by that other plugin code (as the missing-cell note names it) next
to this checkout's cells of the other models; the header lists every such pin, so the table says
which rows come from which code.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import glob
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time

import numpy as np

from recbole_onevision.cli import parse_with_overrides
from recbole_onevision.io import atomic_write_text

QUICK = ["--epochs=1", "--stage_epochs={'pretrain': 1, 'sft': 1, 'dpo': 1}", "--vrq_align_steps=50"]
METRICS = ["recall@5", "recall@10", "ndcg@5", "ndcg@10"]
QUALITY = "ndcg@10"  # the plot's y axis and the significance tests' metric


PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(PLUGIN_DIR, "model")


def _model_imports(path: str) -> dict[str, str]:
    """Names the Python file at ``path`` imports from ``recbole_onevision.model.*`` -> module."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    return {alias.name: node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recbole_onevision.model.")
            for alias in node.names}


def model_files(model: str) -> set[str]:
    """The files under ``model/`` that plugin model ``model`` runs: its module and what that
    imports from there, transitively. Empty for RecBole's own models."""
    module = _model_imports(os.path.join(MODEL_DIR, "__init__.py")).get(model)
    todo, files = [module] if module else [], set()
    while todo:
        path = os.path.join(PLUGIN_DIR, *todo.pop().split(".")[1:]) + ".py"
        if path not in files:
            files.add(path)
            todo.extend(_model_imports(path).values())
    return files


def code_digest(model: str | None = None) -> str:
    """A hash of the plugin's Python code and default configs (this report module aside): what
    a result depends on besides the command line. With ``model``, other models' files (their
    modules under ``model/`` and their ``properties/model/*.yaml``) are left out, so changing
    one model does not make the grid rerun every other one."""
    own = model_files(model) | {os.path.join(PLUGIN_DIR, "properties", "model", f"{model}.yaml")} if model else None
    model_specific = (MODEL_DIR, os.path.join(PLUGIN_DIR, "properties", "model"))
    digest = hashlib.sha1()
    for folder, subfolders, files in os.walk(PLUGIN_DIR):
        subfolders[:] = sorted(f for f in subfolders if f != "__pycache__")
        for name in sorted(files):
            path = os.path.join(folder, name)
            if not name.endswith((".py", ".yaml")) or path == os.path.abspath(__file__):
                continue
            if own is not None and folder in model_specific and name != "__init__.py" and path not in own:
                continue
            digest.update(os.path.relpath(path, PLUGIN_DIR).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:12]


def git_revision() -> str:
    """``git <commit>[, modified]`` of the checkout the plugin runs from, or ``""`` outside git."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=PLUGIN_DIR, capture_output=True, text=True,  # noqa: E731
                                        check=True, timeout=10).stdout.strip()
        commit, changes = run("rev-parse", "--short", "HEAD"), run("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"git {commit}{', modified' if changes else ''}"


def cell_prefix(out: str, dataset: str, model: str, seed: int) -> str:
    """What the folders of one (dataset, model, seed) cell start with, whatever code and settings."""
    return os.path.join(out, "cells", dataset, model, f"seed{seed}-")


def cell_dir(out: str, dataset: str, model: str, seed: int, overrides: list[str], code: str) -> str:
    """The cell's folder; named by the overrides and the ``code`` digest too, so a grid rerun
    with other settings or other code never reuses results made with different ones."""
    settings = hashlib.sha1("\n".join([code, *overrides]).encode()).hexdigest()[:8]
    return cell_prefix(out, dataset, model, seed) + settings


def finished_cell(out: str, dataset: str, model: str, seed: int, overrides: list[str], code: str) -> dict | None:
    """The cell's result if an earlier run finished it, else None."""
    result_file = os.path.join(cell_dir(out, dataset, model, seed, overrides, code), "result.json")
    if not os.path.isfile(result_file):
        return None
    with open(result_file) as f:
        return json.load(f)


def other_code_cells(out: str, dataset: str, model: str, seed: int, code: str) -> list[dict]:
    """Finished results of this cell made by other plugin code: what a report at this code
    cannot use, but can point to."""
    found = []
    for result_file in sorted(glob.glob(glob.escape(cell_prefix(out, dataset, model, seed)) + "*/result.json")):
        with open(result_file) as f:
            result = json.load(f)
        if result.get("plugin_code") != code:
            found.append(result)
    return found


def run_cell(out: str, dataset: str, model: str, seed: int, overrides: list[str], code: str, log) -> dict:
    """Run one cell in a child process unless its result exists; return the result."""
    folder = cell_dir(out, dataset, model, seed, overrides, code)
    result_file = os.path.join(folder, "result.json")
    done = finished_cell(out, dataset, model, seed, overrides, code)
    if done is not None:
        log(f"{dataset} / {model} / seed {seed}: done before, reusing {result_file}")
        return done
    os.makedirs(folder, exist_ok=True)
    command = [sys.executable, "-m", "recbole_onevision.cli", f"--model={model}", f"--dataset={dataset}",
               f"--seed={seed}", f"--checkpoint_dir={folder}", "--show_progress=False", *overrides]
    log(f"{dataset} / {model} / seed {seed}: running ({' '.join(command[3:])})")
    start = time.time()
    with open(os.path.join(folder, "run.log"), "w") as child_log:
        child = subprocess.Popen(command, stdout=child_log, stderr=subprocess.STDOUT)
        try:
            child.wait()
        except BaseException:  # interrupted or killed: stop the cell too, no orphan left training
            child.terminate()
            child.wait()
            raise
    if child.returncode:
        raise RuntimeError(f"{dataset} / {model} / seed {seed} failed (exit {child.returncode}); "
                           f"see {os.path.join(folder, 'run.log')}")
    written = sorted((f for f in os.listdir(folder) if f.endswith(".json") and f != "result.json"),
                     key=lambda f: os.path.getmtime(os.path.join(folder, f)))
    if not written:
        raise RuntimeError(f"{dataset} / {model} / seed {seed}: the run wrote no result JSON in {folder}")
    with open(os.path.join(folder, written[-1])) as f:
        result = json.load(f)
    result["wall_seconds"] = time.time() - start
    result["plugin_code"] = code
    result["plugin_git"] = git_revision()  # where to find that code again
    atomic_write_text(result_file, json.dumps(result, indent=2) + "\n")
    log(f"{dataset} / {model} / seed {seed}: test {QUALITY} {result['test_result'][QUALITY]:.4f} "
        f"in {result['wall_seconds']:.0f}s")
    return result


def split_overrides(overrides: list[str], models: list[str]) -> dict[str, list[str]]:
    """Each model's overrides: the shared ``--key=value`` ones, then its own ``--Model.key=value``
    ones as ``--key=value`` (so a cell's folder is the same as with the plain override)."""
    shared, own = [], {model: [] for model in models}
    for override in overrides:
        key, value = override[2:].split("=", 1)
        if "." not in key:
            shared.append(override)
            continue
        model, key = key.split(".", 1)
        if model not in own:
            raise ValueError(f"{override}: {model!r} is not one of --models ({', '.join(models)})")
        own[model].append(f"--{key}={value}")
    return {model: shared + own[model] for model in models}


def parse_report_code(value: str, models: list[str]) -> dict[str, str]:
    """``--report_code MODEL=DIGEST,...`` -> {model: digest}."""
    pins = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        model, _, digest = item.partition("=")
        if model not in models or not re.fullmatch(r"[0-9a-f]{12}", digest):
            raise ValueError(f"--report_code {item!r}: expected MODEL=DIGEST with MODEL one of --models "
                             f"({', '.join(models)}) and DIGEST 12 hex digits, as the report's missing-cell note names it")
        pins[model] = digest
    return pins


def pinned_note(pinned: dict[str, str], results: dict[tuple[str, str], list[dict]]) -> str:
    """The header's word on rows made by other plugin code than this checkout's (``--report_code``)."""
    if not pinned:
        return ""
    def made_at(model):
        gits = sorted({r.get("plugin_git") or "git unrecorded" for (_, m), runs in results.items() if m == model
                       for r in runs})
        return f"{model} {pinned[model]}" + (f" at {', '.join(gits)}" if gits else " (no cell found)")
    return ("\n\n**Rows of other plugin code** (--report_code; their cells were made by that code, not this "
            "checkout's): " + "; ".join(made_at(m) for m in pinned) + ".")


def other_code_note(elsewhere: dict[str, tuple[set[str], set[str]]]) -> str:
    """Where results of the missing cells from other code are (``--report`` mixes code only as
    ``--report_code`` says)."""
    if not elsewhere:
        return ""
    made = "; ".join(f"{', '.join(sorted(models))} {code}" + (f" at {', '.join(sorted(gits - {''}))}" if gits - {""} else "")
                     for code, (models, gits) in sorted(elsewhere.items(), key=lambda kv: str(kv[0])))
    return (f" Results of other plugin code exist for some of these cells ({made}); to see them, run the "
            "report in a checkout of that code, or pin a model's rows to it with --report_code MODEL=DIGEST.")


def welch_p(a: list[float], b: list[float]) -> float | None:
    if len(a) < 2 or len(b) < 2:
        return None
    import warnings

    from scipy.stats import ttest_ind

    if np.std(a) == 0 and np.std(b) == 0:
        return 0.0 if np.mean(a) != np.mean(b) else 1.0
    with warnings.catch_warnings():  # near-identical seeds (a model that learns nothing) warn
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_ind(a, b, equal_var=False).pvalue)


def summarise(results: dict[tuple[str, str], list[dict]]) -> dict[tuple[str, str], dict]:
    rows = {}
    for key, runs in results.items():
        tests = [r["test_result"] for r in runs]
        latency = [r["latency_ms"] for r in runs if r.get("latency_ms")]
        rows[key] = {
            "seeds": len(runs),
            **{m: [t[m] for t in tests] for m in METRICS},
            "train_min": float(np.mean([r["train_seconds"] for r in runs])) / 60,
            "p50": float(np.mean([lat["p50"] for lat in latency])) if latency else float("nan"),
            "p95": float(np.mean([lat["p95"] for lat in latency])) if latency else float("nan"),
            "peak_gb": float(max(r.get("peak_rss_gb", float("nan")) for r in runs)),
        }
    return rows


def significance(a: list[float], b: list[float]) -> str:
    p = welch_p(a, b)
    if p is None:
        return "single seed"
    return f"{'significant' if p < 0.05 else 'not significant'} ({'p<0.001' if p < 0.001 else f'p={p:.3f}'})"


def ranked_per_dataset(rows: dict, metric: str) -> dict[str, list[tuple[str, dict]]]:
    """{dataset: [(model, row), ...]} in the order of ``rows``' datasets, models by mean ``metric``, best first."""
    return {dataset: sorted(((m, r) for (d, m), r in rows.items() if d == dataset), key=lambda mr: -np.mean(mr[1][metric]))
            for dataset in dict.fromkeys(d for d, _ in rows)}


def markdown(rows: dict, header: str) -> str:
    """One table; per dataset the models are ranked by mean test QUALITY, and each model's gap to
    the best one and to the next one down is tested (the steps of the ranking that hold)."""
    lines = [header, "", "| dataset | model | seeds | " + " | ".join(METRICS)
             + " | train (min) | latency p50 / p95 (ms) | peak memory (GB) | vs best | vs next |",
             "|---" * (len(METRICS) + 8) + "|"]
    for dataset, ranked in ranked_per_dataset(rows, QUALITY).items():
        best = ranked[0][1]
        for i, (model, r) in enumerate(ranked):
            cells = [f"{np.mean(r[m]):.4f}" + (f" ± {np.std(r[m], ddof=1):.4f}" if r["seeds"] > 1 else "")
                     for m in METRICS]
            vs_best = "best" if i == 0 else significance(r[QUALITY], best[QUALITY])
            vs_next = (f"{significance(r[QUALITY], ranked[i + 1][1][QUALITY])} over {ranked[i + 1][0]}"
                       if i + 1 < len(ranked) else "last")
            lines.append(f"| {dataset} | {model} | {r['seeds']} | " + " | ".join(cells)
                         + f" | {r['train_min']:.1f} | {r['p50']:.2f} / {r['p95']:.2f} | {r['peak_gb']:.2f}"
                         + f" | {vs_best} | {vs_next} |")
    lines += ["", f"Rows ranked by mean test {QUALITY}. vs best / vs next: Welch's t-test on test {QUALITY} "
              "against the dataset's best model / the model ranked next below (needs 2+ seeds on both sides; "
              "significant: p < 0.05).", "", *metric_leaders(rows)]
    return "\n".join(lines) + "\n"


def metric_leaders(rows: dict) -> list[str]:
    """Per dataset and metric, the leading model and its gap to the runner-up on that metric,
    tested: the ranking by QUALITY need not hold for recall, and a claim per metric needs its test.
    Empty when no dataset has two models."""
    lines = []
    leaders = {metric: ranked_per_dataset(rows, metric) for metric in METRICS}
    for dataset in leaders[QUALITY]:
        for metric in METRICS:
            if len(leaders[metric][dataset]) < 2:
                continue
            (first, a), (second, b) = leaders[metric][dataset][:2]
            lead, base = np.mean(a[metric]) - np.mean(b[metric]), np.mean(b[metric])
            relative = f" ({lead / base:+.1%})" if base > 0 else ""
            lines.append(f"| {dataset} | {metric} | {first} | {second} | {lead:+.4f}{relative} "
                         f"| {significance(a[metric], b[metric])} |")
    if not lines:
        return []
    return ["Per metric: the best model on each test metric and its lead over the runner-up on that metric "
            "(Welch's t-test, as above).", "",
            "| dataset | metric | best | runner-up | lead | lead vs runner-up |", "|---" * 6 + "|", *lines]


def plot(rows: dict, path: str) -> bool:
    """Quality against latency, one marker per (dataset, model); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    datasets = {dataset for dataset, _ in rows}
    heights = [np.mean(r[QUALITY]) for r in rows.values()]
    span = (max(heights) - min(heights)) or 1.0
    placed: list[float] = []
    for ((dataset, model), r), y in zip(rows.items(), heights):
        ax.errorbar(r["p50"], y, yerr=np.std(r[QUALITY]) if r["seeds"] > 1 else None, fmt="o", capsize=3)
        # labels of points at about the same height go one under the other, not on top
        below = sum(abs(y - other) < 0.04 * span for other in placed)
        placed.append(y)
        ax.annotate(model if len(datasets) == 1 else f"{model} ({dataset})", (r["p50"], y),
                    textcoords="offset points", xytext=(5, 3 - 11 * below), fontsize=8)
    if len(datasets) == 1:
        ax.set_title(next(iter(datasets)))
    ax.set_xscale("log")
    ax.margins(x=0.15)  # room for the rightmost point's label
    ax.set_xlabel("single-query latency p50 (ms, log scale)")
    ax.set_ylabel(f"test {QUALITY}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m recbole_onevision.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="OneVision,MCA,VisualKNN,SASRec,Pop")
    parser.add_argument("--datasets", default="mvshop-mini")
    parser.add_argument("--seeds", default="2020", help="comma-separated; 2+ give mean ± std and t-tests")
    parser.add_argument("--out", default=os.path.join("results", "benchmark"))
    parser.add_argument("--quick", action="store_true", help="smoke run: one epoch per stage, short VRQ fit")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: write the table and plot of the cells finished so far, naming the missing ones")
    parser.add_argument("--report_code", default="", metavar="MODEL=DIGEST,...",
                        help="with --report: report these models' cells made by that other plugin code (named in the header)")
    parser.add_argument("--latency_queries", type=int, default=None,
                        help="single queries timed per cell (default 200; 20 with --quick)")
    args, overrides = parse_with_overrides(parser, argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not (models and datasets and seeds):
        parser.error("--models, --datasets and --seeds each need at least one value")
    latency = args.latency_queries if args.latency_queries is not None else (20 if args.quick else 200)
    overrides = [f"--latency_queries={latency}"] + (QUICK if args.quick else []) + overrides
    try:
        per_model = split_overrides(overrides, models)
        pinned = parse_report_code(args.report_code, models)
    except ValueError as error:
        parser.error(str(error))
    if pinned and not args.report:
        parser.error("--report_code only goes with --report: cells are always run by this checkout's code")

    def log(message):
        print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", flush=True)

    code = {model: pinned.get(model) or code_digest(model) for model in models}
    log("plugin code digests " + ", ".join(f"{m} {c}" + (" (pinned)" if m in pinned else "") for m, c in code.items())
        + ": cells made by this code and these overrides are reused")
    total, results, missing = len(models) * len(datasets) * len(seeds), {}, []
    elsewhere: dict[str, tuple[set[str], set[str]]] = {}  # other plugin code -> (models, git revisions) of missing cells
    n = 0
    for dataset in datasets:
        for model in models:
            for seed in seeds:
                n += 1
                if args.report:
                    result = finished_cell(args.out, dataset, model, seed, per_model[model], code[model])
                    if result is None:
                        missing.append(f"{dataset} / {model} / seed {seed}")
                        for other in other_code_cells(args.out, dataset, model, seed, code[model]):
                            models_there, gits = elsewhere.setdefault(other.get("plugin_code"), (set(), set()))
                            models_there.add(model)
                            gits.add(other.get("plugin_git") or "")
                        continue
                else:
                    log(f"cell {n}/{total}")
                    result = run_cell(args.out, dataset, model, seed, per_model[model], code[model], log)
                results.setdefault((dataset, model), []).append(result)
    if not results:
        parser.error(f"--report: no finished cell of this grid under {args.out} (same overrides, same code)."
                     + other_code_note(elsewhere))
    rows = summarise(results)
    import torch

    revision = git_revision()
    own_code = [f"{m} {c}" for m, c in code.items() if m not in pinned]
    header = (f"# Benchmark\n\n`python -m recbole_onevision.benchmark {' '.join(argv if argv is not None else sys.argv[1:])}`"
              f"\n\n{datetime.date.today()}; {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), "
              f"Python {platform.python_version()}, torch {torch.__version__}, RecBole "
              f"{__import__('recbole').__version__}, NumPy {np.__version__}; "
              + (f"plugin code {', '.join(own_code)}{f' ({revision})' if revision else ''}; " if own_code else "")
              + f"seeds {', '.join(map(str, seeds))}"
              + ("; --quick (smoke run, not a result)" if args.quick else "")
              + pinned_note(pinned, results)
              + (f"\n\n**Partial: {len(missing)} of {total} cells not run yet:** {'; '.join(missing)}."
                 + other_code_note(elsewhere) if missing else ""))
    report = markdown(rows, header)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "benchmark.md"), report)
    plotted = plot(rows, os.path.join(args.out, "benchmark.png"))
    print("\n" + report)
    log(f"wrote {os.path.join(args.out, 'benchmark.md')}" + (
        f" and {os.path.join(args.out, 'benchmark.png')}" if plotted else
        " (no plot: matplotlib is not installed; pip install -e '.[bench]')"))
    return rows


if __name__ == "__main__":
    # `kill <benchmark>` then unwinds like Ctrl-C, so the running cell's child is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
