"""Who wins where: OneVision against the cascade (MCA) as MVShop's generator knobs move.

    python benchmarks/generator_sweep.py [--out results/generator-sweep] [--workers 2] [--seed 2020]

Each knob that decides who should win is set to three values, the others at MVShop mini's:
look-alikes per product (``family_size``), query photo noise (``query_noise``), how sharply the
user's taste picks among look-alikes (``taste_strength``) and how readily a click becomes an
order (``order_threshold``; higher, fewer orders). Each setting is generated as its own dataset
(``dataset/mvshop-sweep-<knob>-<value>``; the middle values are MVShop mini itself), then
OneVision, MCA and VisualKNN are trained and tested on it with ``run.py`` (one seed per cell,
``--workers`` at a time, each on one thread). Each cell's JSON is kept, so a rerun skips finished
cells. The table gives each model's NDCG@10 and ProductHit@10 and the OneVision - MCA gaps.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from recbole_onevision.io import atomic_write_text  # noqa: E402
from recbole_onevision.preprocess import mvshop  # noqa: E402

KNOBS = {"family_size": (3, 6, 12), "query_noise": (0.2, 0.4, 0.8), "taste_strength": (0.5, 2.0, 8.0),
         "order_threshold": (-1.0, 0.5, 2.0)}
MODELS = ("OneVision", "MCA", "VisualKNN")
METRICS = "--metrics=['Recall','NDCG','ProductHit','OrderNDCG']"
PROTOCOL = os.path.join(ROOT, "recbole_onevision", "properties", "dataset", "mvshop.yaml")


def settings() -> list[tuple[str, object, str]]:
    """(knob, value, dataset name); the default value of every knob is MVShop mini itself."""
    base = mvshop.SCALES["mini"]
    out = []
    for knob, values in KNOBS.items():
        for value in values:
            default = getattr(base, knob) == value
            out.append((knob, value, "mvshop-mini" if default else f"mvshop-sweep-{knob}-{value:g}"))
    return out


def generate(data_path: str) -> None:
    base = mvshop.SCALES["mini"]
    mvshop.generate("mini", data_path)
    for knob, value, name in settings():
        if name != "mvshop-mini":
            mvshop.generate(name[len("mvshop-"):], data_path, spec=dataclasses.replace(base, **{knob: value}))


def run_cell(dataset: str, model: str, out: str, seed: int, data_path: str) -> dict:
    path = os.path.join(out, f"{dataset}-{model}-{seed}.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    saved = os.path.join(out, "saved", f"{dataset}-{model}")
    command = [sys.executable, os.path.join(ROOT, "run.py"), f"--model={model}", f"--dataset={dataset}",
               f"--seed={seed}", f"--data_path={data_path}", f"--config_files={PROTOCOL}",
               f"--checkpoint_dir={saved}", "--show_progress=False", METRICS]
    log = os.path.join(out, f"{dataset}-{model}-{seed}.log")
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(f"{model} on {dataset} failed (exit {done.returncode}); see {log}")
    results = [n for n in os.listdir(saved) if n.endswith(".json")]
    with open(os.path.join(saved, sorted(results)[-1])) as f:
        result = json.load(f)["test_result"]
    atomic_write_text(path, json.dumps(result, indent=2))
    return result


def table(results: dict) -> str:
    lines = ["| knob | value | OneVision N@10 | MCA N@10 | VisualKNN N@10 | OneVision - MCA N@10 | "
             "OneVision PH@10 | MCA PH@10 | OneVision - MCA PH@10 |", "|---" * 9 + "|"]
    for knob, value, name in settings():
        r = {m: results[(name, m)] for m in MODELS}
        ndcg = {m: r[m]["ndcg@10"] for m in MODELS}
        ph = {m: r[m]["producthit@10"] for m in MODELS}
        lines.append(f"| {knob} | {value:g} | {ndcg['OneVision']:.4f} | {ndcg['MCA']:.4f} | {ndcg['VisualKNN']:.4f} | "
                     f"{ndcg['OneVision'] - ndcg['MCA']:+.4f} | {ph['OneVision']:.4f} | {ph['MCA']:.4f} | "
                     f"{ph['OneVision'] - ph['MCA']:+.4f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "generator-sweep"))
    parser.add_argument("--data_path", default=os.path.join(ROOT, "dataset"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    generate(args.data_path)
    cells = sorted({(name, model) for _, _, name in settings() for model in MODELS},
                   key=lambda c: (c[1] != "OneVision", c))  # the long cells first
    with ThreadPoolExecutor(args.workers) as pool:
        futures = {c: pool.submit(run_cell, *c, args.out, args.seed, args.data_path) for c in cells}
        results = {c: f.result() for c, f in futures.items()}
    report = (f"MVShop generator sweep, seed {args.seed}, test split; {platform.node()} "
              f"({platform.processor() or platform.machine()}), {datetime.date.today()}\n\n{table(results)}\n")
    atomic_write_text(os.path.join(args.out, "sweep.md"), report)
    print(report)


if __name__ == "__main__":
    main()
