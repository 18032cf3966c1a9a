"""Which part of a trained OneVision does the search: one checkpoint, four inference settings
(and the cascade's user part beside it, measured the same way).

    python benchmarks/generative_ablation.py --checkpoint saved/<run>-dpo.pth [--dataset mvshop-mini]
        [--no_bias_checkpoint saved/<run trained with --visual_bias=0>-dpo.pth]
        [--mca_checkpoint saved/MCA-<run>.pth] [--config_files F] [--key=value ...]
    python benchmarks/generative_ablation.py --no_bias_checkpoint saved/<run>-dpo.pth [--config_files F] [--key=value ...]

The checkpoint is evaluated on the test split through RecBole's evaluator as trained (decoder +
visual bias), with the visual bias's scale set to 0 (the decoder alone), with the decoder's
logits set to 0 (the visual bias alone, still under the SID trie; with ``item_attributes`` their
output logits too) and with the user's profile and history removed (the photo alone).
``--no_bias_checkpoint`` adds a model trained without the bias, as trained and with the photo
alone (given alone, only those two rows: what the user adds to the decoder alone).
``--mca_checkpoint`` adds the cascade the same way, as trained and with its ranker's user inputs
(history and profile) blanked, so both models' user parts are measured alike. Run with the
config files and overrides the checkpoints were trained with, so the same SIDs are rebuilt
(they come from the VRQ cache); on data without behaviours (image folders) add
``--metrics="['Recall','NDCG']"``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_onevision.cli import add_config_files, parse_with_overrides  # noqa: E402
from recbole_onevision.quick_start import load_trained  # noqa: E402

METRICS = ["Recall", "NDCG", "ProductHit", "OrderNDCG"]
COLUMNS = ["recall@1", "recall@10", "ndcg@10", "producthit@5", "orderndcg@10"]  # those the run measures


@contextlib.contextmanager
def decoder_alone(model):
    scale = model.visual_bias.log_scale.data.clone()
    model.visual_bias.log_scale.data.fill_(float("-inf"))  # exp(-inf) = 0: no bias
    try:
        yield
    finally:
        model.visual_bias.log_scale.data.copy_(scale)


@contextlib.contextmanager
def bias_alone(model):
    decoder = model.sid_decoder
    original = decoder.level_logits

    def zero(states, level, codes):
        logits = original(states, level, codes)
        return torch.zeros_like(logits)

    decoder.level_logits = zero
    attributes = model.inputs.attributes  # its output logits are the decoder's too
    if attributes is not None:
        attributes.logits = lambda states, level, children: torch.zeros(children.shape, device=children.device)
    nodes = decoder.nodes  # node outputs too
    if nodes is not None:
        nodes.logits = lambda states, photo, level, children: torch.zeros(children.shape, device=children.device)
    try:
        yield
    finally:
        del decoder.level_logits
        if attributes is not None:
            del attributes.logits
        if nodes is not None:
            del nodes.logits


@contextlib.contextmanager
def photo_alone(model):
    forward = model.inputs.forward
    model.inputs.forward = lambda interaction, codes, context=True, *rest, **named: forward(
        interaction, codes, False, *rest, **named)
    try:
        yield
    finally:
        del model.inputs.forward


@contextlib.contextmanager
def cascade_photo_alone(model):
    """MCA's ranker without the user: history and profile read as padding (zero vectors)."""
    rank = model.rank

    def blanked(interaction, items, similarity):
        user = {f: torch.zeros_like(interaction[f]) for f in (model.ITEM_SEQ, *model.profile_fields)}
        return rank({model.query_field: interaction[model.query_field], **user}, items, similarity)

    model.rank = blanked
    try:
        yield
    finally:
        del model.rank


def evaluate(trained) -> dict[str, float]:
    test = trained.splits[2]
    with torch.no_grad():
        return trained.trainer.evaluate(test, load_best_model=False, show_progress=False)


def main(argv=None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="a OneVision checkpoint trained with the visual bias")
    parser.add_argument("--no_bias_checkpoint", default=None, help="one trained with --visual_bias=0")
    parser.add_argument("--mca_checkpoint", default=None, help="an MCA checkpoint of the same data")
    parser.add_argument("--dataset", default="mvshop-mini")
    add_config_files(parser)
    args, overrides = parse_with_overrides(parser, argv)
    if not (args.checkpoint or args.no_bias_checkpoint or args.mca_checkpoint):
        parser.error("give --checkpoint, --no_bias_checkpoint, --mca_checkpoint or several")
    try:
        return ablate(args, overrides)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"generative_ablation: error: {err}\n")


def ablate_bias(checkpoint: str, dataset: str, files, settings: dict, overrides) -> dict[str, dict]:
    """The four settings of a checkpoint trained with the visual bias."""
    trained = load_trained("OneVision", dataset, checkpoint, files, config_dict=settings, cmd_args=overrides)
    model = trained.model
    if model.visual_bias is None:
        raise ValueError(f"{checkpoint} was trained without the visual bias; pass it as --no_bias_checkpoint")
    rows = {"as trained (decoder + visual bias)": evaluate(trained)}
    for label, setting in (("decoder alone (bias scale 0)", decoder_alone), ("visual bias alone (decoder logits 0)",
                           bias_alone), ("photo alone (no profile, no history)", photo_alone)):
        with setting(model):
            rows[label] = evaluate(trained)
    return rows


def ablate(args, overrides) -> dict[str, dict]:
    settings = {"metrics": METRICS, "topk": [1, 5, 10]}
    rows = ablate_bias(args.checkpoint, args.dataset, args.config_files, settings, overrides) if args.checkpoint else {}
    if args.no_bias_checkpoint:
        no_bias = load_trained("OneVision", args.dataset, args.no_bias_checkpoint, args.config_files, config_dict=settings,
                               cmd_args=[*overrides, "--visual_bias=0"])
        rows["trained and evaluated without the bias"] = evaluate(no_bias)
        with photo_alone(no_bias.model):
            rows["the same, photo alone (no profile, no history)"] = evaluate(no_bias)
    if args.mca_checkpoint:
        mca = load_trained("MCA", args.dataset, args.mca_checkpoint, args.config_files, config_dict=settings,
                           cmd_args=overrides)
        rows["MCA as trained"] = evaluate(mca)
        with cascade_photo_alone(mca.model):
            rows["MCA, photo alone (ranker without profile and history)"] = evaluate(mca)
    print(f"\n{args.dataset} test, checkpoints {args.checkpoint or '-'} (bias), {args.no_bias_checkpoint or '-'} "
          f"(no bias), {args.mca_checkpoint or '-'} (MCA); {platform.node()}, torch {torch.__version__}, "
          f"{datetime.date.today()}\n")
    columns = [c for c in COLUMNS if c in next(iter(rows.values()))]
    print("| setting | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 1) + "|")
    for label, result in rows.items():
        print(f"| {label} | " + " | ".join(f"{result[c]:.4f}" for c in columns) + " |")
    return rows


if __name__ == "__main__":
    main()
