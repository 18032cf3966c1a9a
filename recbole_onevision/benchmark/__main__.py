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
import datetime
import os
import platform
import re
import signal
import sys
import time

import numpy as np

from recbole_onevision.benchmark.grid import (
    QUICK, QUICK_OWN, check_grid, code_digest, finished_cell, git_revision, other_code_cells, run_cell,
    split_overrides)
from recbole_onevision.benchmark.plot import plot
from recbole_onevision.benchmark.report import markdown, other_code_note, pinned_note
from recbole_onevision.benchmark.stats import summarise
from recbole_onevision.cli import parse_with_overrides
from recbole_onevision.io import atomic_write_text


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
    if args.latency_queries is not None and args.latency_queries < 0:
        parser.error(f"--latency_queries: expected 0 or more single queries to time, got {args.latency_queries}")
    latency = args.latency_queries if args.latency_queries is not None else (20 if args.quick else 200)
    quick = QUICK + [f"--{model}.{o[2:]}" for model in models for o in QUICK_OWN.get(model, [])]
    overrides = [f"--latency_queries={latency}"] + (quick if args.quick else []) + overrides
    try:
        per_model = split_overrides(overrides, models)
        pinned = parse_report_code(args.report_code, models)
    except ValueError as error:
        parser.error(str(error))
    if pinned and not args.report:
        parser.error("--report_code only goes with --report: cells are always run by this checkout's code")
    if not args.report:
        try:
            check_grid(models, datasets, per_model)
        except (ValueError, KeyError, FileNotFoundError) as error:
            parser.error(str(error))

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
