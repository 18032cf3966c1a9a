"""Why is one SASRec epoch slow on a small CPU? Side-by-side training-step timings, one run.

    python benchmarks/sasrec_epoch_speed.py [--dataset ml-100k] [--batches 8]

Each setting trains SASRec (RecBole defaults: 2 layers, hidden 64, CE loss, MAX_ITEM_LIST_LENGTH
50) for ``--batches`` steps after one warm-up step, on the same data and seed, and reports the
mean step time, the time per 1,000 training sequences and the epoch time it extrapolates to.
Settings: RecBole's anomaly detection (switched on by importing any of its sequential models)
on vs. off, and the default ``train_batch_size`` 2048 vs. 256.
"""
from __future__ import annotations

import argparse
import time

import torch
from recbole.utils import init_seed

from recbole_onevision.config import Config
from recbole_onevision.registry import create_dataset, data_preparation, get_model


def time_steps(config, train_data, batches: int, anomaly: bool) -> float:
    """Mean seconds per training step (forward, backward, Adam) over ``batches`` steps."""
    init_seed(config["seed"], True)
    model = get_model("SASRec")(config, train_data._dataset)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    torch.autograd.set_detect_anomaly(anomaly)
    times = []
    try:
        for step, interaction in enumerate(train_data):
            start = time.perf_counter()
            optimizer.zero_grad()
            model.calculate_loss(interaction).backward()
            optimizer.step()
            if step:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - start)
            if len(times) == batches:
                break
    finally:
        torch.autograd.set_detect_anomaly(False)
    return sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    rows = []
    for batch_size in (2048, 256):
        config = Config("SASRec", args.dataset, config_dict={
            "train_batch_size": batch_size, "show_progress": False, "state": "WARNING"})
        init_seed(config["seed"], True)
        train_data = data_preparation(config, create_dataset(config))[0]
        sequences = len(train_data._dataset)
        for anomaly in (True, False):
            step = time_steps(config, train_data, args.batches, anomaly)
            per_seq = step / batch_size
            rows.append((anomaly, batch_size, step, 1000 * per_seq, per_seq * sequences))
            print(f"anomaly={anomaly} batch={batch_size}: {step:.3f}s/step", flush=True)
    base = rows[0][4]
    print(f"\nSASRec training on {args.dataset} ({sequences} training sequences), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| anomaly detection | train_batch_size | s / step | s / 1k sequences | epoch (s, extrapolated) | speed-up |")
    print("|---|---|---|---|---|---|")
    for anomaly, batch_size, step, per_k, epoch in rows:
        print(f"| {'on' if anomaly else 'off'} | {batch_size} | {step:.3f} | {per_k:.3f} | {epoch:.0f} | {base / epoch:.2f}x |")


if __name__ == "__main__":
    main()
