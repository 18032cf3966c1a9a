"""OneVision's score fusion (constrained beams + dense head) at several weights, on one checkpoint.

    python benchmarks/score_fusion.py --checkpoint saved/<run>-dpo.pth --dataset Toys \\
        [--weights 0,0.5,1,2,4] [--dense_only] [--config_files F] [--key=value ...]

A checkpoint trained with the dense head (``dense_loss_weight`` > 0) is evaluated through
RecBole's evaluator on the valid and the test split once per ``dense_score_weight`` in
``--weights`` (0 = the beams alone; w > 0 = the beams and the dense head's top items, each
scored by its SID log-probability + w x its dense log-probability) and, with ``--dense_only``,
ranked by the dense head alone. Choose the weight on the valid columns; the test ones say
what that choice is worth. Run with the config overrides the checkpoint was trained with
(its ``dense_readout`` among them), so the same SIDs are rebuilt from the VRQ cache.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_onevision.cli import config_file_list, parse_with_overrides  # noqa: E402
from recbole_onevision.quick_start import load_trained  # noqa: E402


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


def sweep(model, trainer, valid_data, test_data, weights: list[float], dense_only: bool) -> list[dict]:
    """One row per setting: its name and RecBole's valid and test results."""
    settings = [(f"dense_score_weight {w:g}" + (" (beams alone)" if w == 0 else ""), w, False) for w in weights]
    if dense_only:
        settings.append(("dense head alone", model.dense_score_weight, True))
    rows = []
    for name, weight, alone in settings:
        model.dense_score_weight, model.dense_only = weight, alone
        with torch.no_grad():
            valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
            test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        rows.append({"setting": name, "valid": dict(valid), "test": dict(test)})
        print(f"{name}: valid {_shown(valid)}; test {_shown(test)}", flush=True)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a OneVision checkpoint written by run.py")
    parser.add_argument("--dataset", default="Toys")
    parser.add_argument("--weights", default="0,0.5,1,2,4", help="dense_score_weight values (comma-separated)")
    parser.add_argument("--dense_only", action="store_true", help="also rank by the dense head alone")
    parser.add_argument("--config_files", default=None, help="extra config files (space or comma separated), as for run.py")
    args, overrides = parse_with_overrides(parser, argv)
    weights = parse_weights(args.weights)
    trained = load_trained("OneVision", args.dataset, args.checkpoint, config_file_list(args.config_files),
                           cmd_args=overrides)
    model, trainer, (_, valid_data, test_data) = trained.model, trained.trainer, trained.splits
    if not bool(model.dense_trained):
        raise SystemExit(f"--checkpoint {args.checkpoint}: trained without the dense head's loss "
                         "(dense_loss_weight 0), so there is nothing to fuse")
    rows = sweep(model, trainer, valid_data, test_data, weights, args.dense_only)

    metrics = list(rows[0]["test"])
    print(f"\nOneVision score fusion on {args.dataset}, checkpoint {args.checkpoint} (dense_readout "
          f"{model.dense_readout}, beam_size {model.beam_size}); {platform.node()} "
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
