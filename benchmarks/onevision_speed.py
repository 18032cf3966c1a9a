"""OneVision's training-step and decoding time, for two or more code revisions side by side.

    python benchmarks/onevision_speed.py --revisions bd1b964,HEAD [--dataset mvshop-small]
                                         [--batches 6] [--eval_batches 3] [--threads 1] [--key=value ...]

Each revision is checked out into a temporary git worktree and measured in its own child
process, on the same data (``--data_path``, default this checkout's ``dataset/``, so the VRQ
cache is shared and every revision gets the same SIDs): seconds per training batch of each
stage (the mean of ``--batches`` batches after a warm-up one, same seed, same batches) and
seconds per evaluation batch of ``full_sort_predict`` (constrained beam search), with an
epoch / validation-pass estimate. The table gives every revision's figures and the ratio of the
last to the first. The revisions alternate in ``--rounds`` rounds and each keeps its best, so
load from other jobs biases neither.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MEASURE = r"""
import itertools, json, sys, time, torch
from recbole.utils import init_seed
from recbole_onevision.config import Config
from recbole_onevision.registry import create_dataset, data_preparation

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
config = Config("OneVision", args["dataset"], None, {"show_progress": False, "state": "WARNING",
                                                    "data_path": args["data_path"]}, cmd_args=args["overrides"])
init_seed(config["seed"], True)
dataset = create_dataset(config)
train, valid, _ = data_preparation(config, dataset)
model = config.model_class(config, train._dataset)
optimizer = torch.optim.Adam(model.parameters(), 1e-4)
out = {"train_rows": len(train._dataset), "valid_rows": len(valid._dataset)}


def batches(loader, n):  # n batches, the first ones again if the split has fewer
    return list(itertools.islice(itertools.cycle(loader), n))


for stage in ("pretrain", "sft", "dpo"):
    if not model.supports_stage(stage) or not args["batches"]:
        continue
    init_seed(config["seed"], True)
    train.generator.manual_seed(config["seed"])
    model.set_stage(stage)
    model.train()
    seconds = []
    for batch in batches(train, args["batches"] + 1):
        start = time.perf_counter()
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    out[stage] = sum(seconds[1:]) / len(seconds[1:])
    out[stage + "_first"] = seconds[0]  # the warm-up batch: one-off work (e.g. the visual bias's tables)
    out["train_batch"] = len(batch)
model.eval()
seconds = []
with torch.no_grad():
    for batch in batches(valid, args["eval_batches"] + 1):
        start = time.perf_counter()
        model.full_sort_predict(batch[0])
        seconds.append(time.perf_counter() - start)
out["decode"] = sum(seconds[1:]) / len(seconds[1:])
out["eval_batch"] = len(batch[0])
print("RESULT " + json.dumps(out))
"""


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revisions", required=True, help="comma-separated git revisions (HEAD, a hash, a tag)")
    parser.add_argument("--dataset", default="mvshop-small")
    parser.add_argument("--data_path", default=os.path.join(ROOT, "dataset"))
    parser.add_argument("--batches", type=int, default=6, help="training batches per stage; 0: decoding only")
    parser.add_argument("--eval_batches", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args, overrides = parser.parse_known_args(argv)  # --key=value, checked by the plugin's Config
    bad = [a for a in overrides if not (a.startswith("--") and "=" in a)]
    if bad:
        parser.error(f"unrecognised arguments {bad}: overrides must look like --key=value")
    if min(args.eval_batches, args.rounds, args.threads) < 1 or args.batches < 0:
        parser.error("--eval_batches, --rounds and --threads must be at least 1, --batches at least 0")
    return args, overrides


def measure(worktree: str, args, overrides) -> dict:
    payload = json.dumps({"dataset": args.dataset, "data_path": args.data_path, "overrides": overrides,
                          "batches": args.batches, "eval_batches": args.eval_batches, "threads": args.threads})
    env = {**os.environ, "PYTHONPATH": worktree, "OMP_NUM_THREADS": str(args.threads)}
    child = subprocess.run([sys.executable, "-c", MEASURE, payload], cwd=worktree, env=env,
                           capture_output=True, text=True)
    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    if child.returncode or not lines:
        raise RuntimeError(f"measuring {worktree} failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> None:
    args, overrides = parse(argv)
    revisions = [r.strip() for r in args.revisions.split(",") if r.strip()]
    with tempfile.TemporaryDirectory() as scratch:
        trees = {}
        for revision in revisions:
            commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout.strip()
            path = os.path.join(scratch, commit)
            subprocess.run(["git", "worktree", "add", "--detach", path, commit], cwd=ROOT, check=True,
                           capture_output=True)
            trees[revision] = (commit, path)
        try:
            best: dict[str, dict] = {}
            for round_ in range(args.rounds):
                for revision, (commit, path) in trees.items():
                    print(f"round {round_ + 1}/{args.rounds}: {revision} ({commit})", file=sys.stderr, flush=True)
                    result = measure(path, args, overrides)
                    if revision in best:
                        result = {k: min(v, best[revision][k]) if isinstance(v, float) else v
                                  for k, v in result.items()}
                    best[revision] = result
        finally:
            for _, path in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", path], cwd=ROOT, capture_output=True)
    print(report(best, trees, args, overrides))


def report(best: dict, trees: dict, args, overrides) -> str:
    first, last = best[next(iter(best))], best[list(best)[-1]]
    rows_per_epoch, valid_rows = first["train_rows"], first["valid_rows"]
    head = " | ".join(f"{rev} ({trees[rev][0]})" for rev in best)
    lines = [f"OneVision speed on {args.dataset}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
             f"{datetime.date.today()}; overrides {' '.join(overrides) or 'none'}",
             f"train batch {first.get('train_batch', '-')} rows ({rows_per_epoch} per epoch), eval batch {first['eval_batch']} "
             f"rows ({valid_rows} per validation pass); best of {args.rounds} rounds",
             "", f"| step | {head} | ratio last/first | estimate for the last (min) |",
             "|---" * (len(best) + 3) + "|"]
    for key, batch, total, what in (("pretrain", "train_batch", rows_per_epoch, "epoch"),
                                    ("sft", "train_batch", rows_per_epoch, "epoch"),
                                    ("dpo", "train_batch", rows_per_epoch, "epoch"),
                                    ("decode", "eval_batch", valid_rows, "validation pass")):
        if key not in first:
            continue
        cells = " | ".join(f"{best[rev][key]:.3f} s" for rev in best)
        minutes = last[key] * total / last[batch] / 60
        lines.append(f"| {key} | {cells} | {last[key] / first[key]:.2f}x | {minutes:.1f} per {what} |")
    firsts = [key for key in ("pretrain_first", "sft_first", "dpo_first") if key in first and key in last]
    if firsts:
        lines += ["", "First (warm-up) batch of each stage, not in the means above: one-off work such as "
                  "the visual bias's level-0 tables lands there.", "",
                  f"| first batch | {head} |", "|---" * (len(best) + 1) + "|"]
        lines += [f"| {key[:-6]} | " + " | ".join(f"{best[rev][key]:.1f} s" for rev in best) + " |" for key in firsts]
    return "\n".join(lines)


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"\n({time.time() - started:.0f} s)", file=sys.stderr)
