"""OneVision's score fusion (constrained beams + dense head) at several weights, on one checkpoint.

    python benchmarks/score_fusion.py --checkpoint saved/<run>-dpo.pth --dataset Toys \\
        [--weights 0,0.5,1,2,4] [--dense] [--config_files F] [--key=value ...]

A checkpoint trained with the dense head (``dense_head`` weight > 0) is evaluated through
RecBole's evaluator on the valid and the test split once per fusion weight in ``--weights``
(0 = the beams alone, as ``ranking: beams``; w > 0 = the beams and the dense head's top items,
each scored by its SID log-probability + w x its dense log-probability; 1 is ``ranking:
fused``) and, with ``--dense``, ranked by the dense head alone (``ranking: dense``). Choose
the weight on the valid columns; the test ones say what that choice is worth. Run with the
config the checkpoint was trained with, so the same SIDs are rebuilt from the VRQ cache.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_onevision.cli import add_config_files, parse_with_overrides  # noqa: E402
from recbole_onevision.model.onevision.beam_search import beam_search  # noqa: E402
from recbole_onevision.quick_start import load_trained  # noqa: E402
from recbole_onevision.topk import RankedLists  # noqa: E402


def parse_weights(text: str) -> list[float]:
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise SystemExit(f"--weights: expected comma-separated numbers >= 0, got {text!r}") from None
    if not weights or min(weights) < 0:
        raise SystemExit(f"--weights: expected comma-separated numbers >= 0, got {text!r}")
    return weights


def _shown(result) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in result.items())


def _lists(items, scores):
    return RankedLists(scores, items)


def sweep(model, trainer, valid_data, test_data, weights: list[float], dense: bool) -> list[dict]:
    """One row per setting: its name and RecBole's valid and test results."""
    settings = [(f"fusion weight {w:g}" + {0: " (beams alone)", 1: " (ranking: fused)"}.get(w, ""), w)
                for w in weights] + ([("dense head alone (ranking: dense)", None)] if dense else [])
    params, rows = model.params, []
    for name, weight in settings:
        if weight is None:
            model.params = dataclasses.replace(params, ranking="dense")
        else:  # the evaluator ranks by the model's beams (full_sort_topk): these fuse with the weight swept
            model.full_sort_topk = lambda interaction, k, w=weight: _lists(
                *beam_search(model, interaction, params.beam_size, params.prune_enabled, w)[:2])
        with torch.no_grad():
            valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
            test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        model.params = params
        model.__dict__.pop("full_sort_topk", None)
        rows.append({"setting": name, "valid": dict(valid), "test": dict(test)})
        print(f"{name}: valid {_shown(valid)}; test {_shown(test)}", flush=True)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a OneVision checkpoint written by run.py")
    parser.add_argument("--dataset", default="Toys")
    parser.add_argument("--weights", default="0,0.5,1,2,4", help="fusion weights (comma-separated)")
    parser.add_argument("--dense", action="store_true", help="also rank by the dense head alone")
    add_config_files(parser)
    args, overrides = parse_with_overrides(parser, argv)
    weights = parse_weights(args.weights)
    trained = load_trained("OneVision", args.dataset, args.checkpoint, args.config_files,
                           cmd_args=overrides)
    model, trainer, (_, valid_data, test_data) = trained.model, trained.trainer, trained.splits
    if not model.params.dense_weight:
        raise SystemExit(f"--checkpoint {args.checkpoint}: trained without the dense head (dense_head weight 0), "
                         "so there is nothing to fuse")
    rows = sweep(model, trainer, valid_data, test_data, weights, args.dense)

    metrics = list(rows[0]["test"])
    print(f"\nOneVision score fusion on {args.dataset}, checkpoint {args.checkpoint} (dense head readout "
          f"{model.params.dense_readout}, beam_size {model.params.beam_size}); {platform.node()} "
          f"({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {datetime.date.today()}\n")
    heads = [f"valid {m}" for m in metrics] + [f"test {m}" for m in metrics]
    print("| setting | " + " | ".join(heads) + " |\n" + "|---" * (len(heads) + 1) + "|")
    for row in rows:
        values = [row["valid"][m] for m in metrics] + [row["test"][m] for m in metrics]
        print(f"| {row['setting']} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return rows


if __name__ == "__main__":
    main()
