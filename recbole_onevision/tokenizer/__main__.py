"""Fit (or reload) a dataset's semantic IDs and print their quality table.

    python -m recbole_onevision.tokenizer --dataset mvshop-mini [--compare] [--key=value ...]

The dataset is loaded and split exactly as for training (its protocol YAML, ``--config_files``
and ``--key=value`` overrides, e.g. ``--vrq_levels=4``); the tokenizer is fitted on the training
split and measured on the held-out (valid/test) query photos. ``--compare`` adds the ablations
side by side: VRQ with a last level that carries content (``vrq_last_codes: auto``), that and
codebooks trained to retrieve their items (``vrq_code_steps: 500``), plain RQ-KMeans on raw
embeddings, VRQ without the circle loss and VRQ without attribute injection (for datasets
without photos: attributes only, collaborative factors only).
"""
from __future__ import annotations

import argparse
import json
import logging
import time

from recbole_onevision.cli import add_config_files, parse_with_overrides
from recbole_onevision.io import atomic_write_text

ABLATIONS = {
    "VRQ": {},
    "+ content last level": {"vrq_last_codes": "auto", "vrq_code_steps": 0},
    "+ trained codebooks": {"vrq_last_codes": "auto", "vrq_code_steps": 500},
    "RQ-KMeans (raw)": {"vrq_align": False, "vrq_attribute_weight": 0.0, "vrq_code_steps": 0, "vrq_last_codes": 0},
    "VRQ w/o circle": {"vrq_circle_weight": 0.0},
    "VRQ w/o attributes": {"vrq_attribute_weight": 0.0},
}
# datasets without photos (Beauty): SIDs from attributes and/or collaborative item factors
ABLATIONS_WITHOUT_VIEWS = {
    "VRQ": {},
    "attributes only": {"vrq_collaborative": False},
    "collaborative only": {"vrq_attribute_weight": 0.0},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recbole_onevision.tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", "-d", required=True, help="dataset folder name under data_path")
    parser.add_argument("--model", default="Pop",
                        help="model whose YAML defaults apply (default: Pop, i.e. none that matter)")
    add_config_files(parser)
    parser.add_argument("--compare", action="store_true", help="also fit the ablations, one column each")
    parser.add_argument("--max_queries", type=int, default=2000,
                        help="held-out query photos measured (a seeded sample beyond this; default 2000)")
    parser.add_argument("--json", default=None, help="also write the reports to this JSON file")
    return parser


def load(dataset: str, model: str = "Pop", config_files=None, overrides=None):
    """``(config, dataset, splits)`` as a run loads them, the tokenizer not yet fitted."""
    from recbole.utils import init_logger, init_seed

    from recbole_onevision.config import Config
    from recbole_onevision.preprocess import mvshop
    from recbole_onevision.quick_start import check_dataset_files
    from recbole_onevision.registry import create_dataset

    config = Config(model, dataset, config_files, {"dataset_class": "MultiViewDataset"}, overrides)
    config["tokenizer"] = config["tokenizer"] or "VRQ"
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    mvshop.ensure_for(config)
    check_dataset_files(config)
    data = create_dataset(config)
    tokenizer_name, config["tokenizer"] = config["tokenizer"], None  # fitted by the caller
    splits = data.build()
    config["tokenizer"] = tokenizer_name
    return config, data, splits


def tokenize(dataset: str, model: str = "Pop", config_files=None, overrides=None, compare: bool = False,
             max_queries: int | None = 2000) -> dict[str, dict]:
    """Fit each variant on ``dataset``'s training split; returns ``{variant: sid_report}``."""
    from recbole_onevision.tokenizer import build_tokenizer, cache_dir
    from recbole_onevision.tokenizer.inputs import gather
    from recbole_onevision.tokenizer.report import sid_report

    config, data, splits = load(dataset, model, config_files, overrides)
    reports = {}
    variants = ABLATIONS if getattr(data, "view_embedding", None) is not None else ABLATIONS_WITHOUT_VIEWS
    base = {key: config[key] for key in {k for v in variants.values() for k in v}}
    for name, changes in (variants if compare else {"VRQ": {}}).items():
        for key, value in {**base, **changes}.items():
            config[key] = value
        tokenizer = build_tokenizer(config)
        inputs = gather(data, splits, config)
        start = time.time()
        tokenizer.fit_or_load(inputs, cache_dir(data), config["show_progress"])
        fit_seconds = time.time() - start
        reports[name] = sid_report(tokenizer, inputs, max_queries, config["seed"])
        reports[name]["fit_seconds"] = round(fit_seconds, 2)
        logging.getLogger().info(f"{name}: {tokenizer.summary()}")
    return reports


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args, overrides = parse_with_overrides(parser, argv)
    from recbole_onevision.tokenizer.report import format_reports

    try:
        reports = tokenize(args.dataset, args.model, args.config_files, overrides, args.compare, args.max_queries)
    except (ValueError, KeyError, FileNotFoundError) as err:
        parser.exit(2, f"tokenizer: error: {err}\n")
    print(f"\nSemantic IDs of {args.dataset} (fitted on the training split; recall and view consistency "
          "on held-out query photos)\n")
    print(format_reports(reports))
    if args.json:
        atomic_write_text(args.json, json.dumps(reports, indent=2))
    return reports


if __name__ == "__main__":
    main()
