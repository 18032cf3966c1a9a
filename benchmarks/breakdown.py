"""Where models differ: test NDCG@10 and Recall@10 per group of test users, for trained checkpoints.

    python benchmarks/breakdown.py --dataset Beauty --runs SASRec=<ckpt.pth> OneVision=<ckpt.pth> \\
        [--key=value ...]

Each run's checkpoint (written by ``run.py`` on the same dataset and config) is evaluated on
the test split as RecBole's full-sort evaluation does (items already in the history masked),
and each test user's rank of the held-out item is kept. Users are grouped by the held-out
item's interactions in the training split (its popularity: rare to popular, about equal
quarters) and by the user's earlier interactions (history before any cut to
``MAX_ITEM_LIST_LENGTH``), both from the dataset, so general and sequential models are grouped
alike (leave-one-out splits only); the table gives each group's share of users and each model's
NDCG@10 / Recall@10 there, so a gap between two models in the overall metric can be traced to
the users it comes from. ``--key=value`` overrides go to every run's config.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from recbole_onevision.cli import add_config_files, parse_with_overrides  # noqa: E402 (light: argparse only)


def leave_one_out_stats(config, dataset) -> tuple[np.ndarray, np.ndarray]:
    """(training interactions per item, earlier interactions per user at test time), from the
    dataset itself, so that every model type (general or sequential) is grouped alike."""
    if config["eval_args"]["split"] != {"LS": "valid_and_test"} or config["eval_args"]["order"] != "TO":
        raise ValueError(f"breakdown: expected the leave-one-out protocol (eval_args split "
                         f"{{'LS': 'valid_and_test'}}, order TO), got {config['eval_args']}")
    inter = dataset.inter_feat
    order = np.argsort(np.asarray(inter[config["TIME_FIELD"]]), kind="stable")  # a DataFrame before build()
    users = np.asarray(inter[config["USER_ID_FIELD"]])[order]
    items = np.asarray(inter[config["ITEM_ID_FIELD"]])[order]
    by_user = np.argsort(users, kind="stable")  # each user's interactions in time order
    users, items = users[by_user], items[by_user]
    counts = np.bincount(users, minlength=dataset.user_num)
    starts = np.cumsum(counts) - counts
    from_end = counts[users] - 1 - (np.arange(len(users)) - starts[users])
    training = from_end >= 2  # the last two of each user are valid and test
    return np.bincount(items[training], minlength=dataset.item_num), counts - 1


def test_ranks(model_name: str, checkpoint: str, dataset_name: str, config_files: list[str] | None,
               overrides: list[str]):
    """Per test user, in user-id order: (rank of the held-out item, 0 = first; its training
    interactions; the user's earlier interactions)."""
    from recbole_onevision.quick_start import load_trained

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--runs {model_name}={checkpoint}: no such checkpoint file")
    config, model, _, (_, _, test), (popularity, earlier) = load_trained(
        model_name, dataset_name, checkpoint, config_files, {"state": "WARNING"}, cmd_args=overrides,
        before_split=leave_one_out_stats)  # one order for every model type
    ranks, users, items = [], [], []
    with torch.no_grad():
        for interaction, history_index, positive_u, positive_i in test:
            if len(positive_u) != len(interaction):
                raise ValueError("breakdown: expected one held-out item per test row (leave-one-out)")
            interaction = interaction.to(config["device"])
            scores = model.full_sort_predict(interaction).view(-1, test._dataset.item_num).float()
            scores[:, 0] = -torch.inf
            if history_index is not None:
                scores[history_index] = -torch.inf
            target = scores[positive_u, positive_i]
            # ties count against the held-out item (one scored -inf, e.g. outside the beams, is never hit)
            ranks.append(((scores[positive_u] >= target.unsqueeze(1)).sum(1) - 1).cpu())
            users.append(interaction[config["USER_ID_FIELD"]][positive_u].cpu())
            items.append(positive_i.cpu())
    users, order = torch.sort(torch.cat(users))
    ranks, items = torch.cat(ranks)[order].numpy(), torch.cat(items)[order].numpy()
    return ranks, popularity[items], earlier[users.numpy()]


def groups(values: np.ndarray, name: str, parts: int = 4) -> list[tuple[str, np.ndarray]]:
    """About equal-size groups by value (ties kept together), labelled by their range."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, parts + 1)))
    out = []
    for low, high in zip(edges[:-1], edges[1:]):
        last = high == edges[-1]
        mask = (values >= low) & ((values <= high) if last else (values < high))
        top = int(high) if last else int(np.ceil(high)) - 1
        out.append((f"{name} {int(low)}-{top}", mask))
    return out


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="MODEL=checkpoint.pth, one per model")
    add_config_files(parser)
    args, overrides = parse_with_overrides(parser, argv)
    runs = {}
    for run in args.runs:
        model, sep, path = run.partition("=")
        if not sep or not model or not path:
            parser.error(f"--runs: expected MODEL=checkpoint.pth, got {run!r}")
        runs[model] = path
    results = {model: test_ranks(model, path, args.dataset, args.config_files, overrides) for model, path in runs.items()}
    first = next(iter(results.values()))
    for model, (_, pop, length) in results.items():  # every model saw the same test users
        if not (np.array_equal(pop, first[1]) and np.array_equal(length, first[2])):
            raise ValueError(f"{model}: other test users than {next(iter(results))} (another split or config?)")
    _, pop, length = first
    rows = [("all users", np.ones(len(pop), bool))]
    rows += groups(pop, "held-out item's training interactions") + groups(length, "user's earlier interactions")
    header = "| users | share | " + " | ".join(f"{m} N@10 | {m} R@10" for m in results) + " |"
    lines = [header, "|---" * (2 + 2 * len(results)) + "|"]
    for label, mask in rows:
        cells = []
        for ranks, _, _ in results.values():
            r = ranks[mask]
            cells += [f"{np.mean(np.where(r < 10, 1 / np.log2(r + 2), 0)):.4f}", f"{np.mean(r < 10):.4f}"]
        lines.append(f"| {label} | {mask.mean():.2f} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
