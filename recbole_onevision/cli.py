"""Command line of ``run.py``."""
from __future__ import annotations

import argparse

DEFAULT_MODEL = "OneVision"
DEFAULT_DATASET = "mvshop-mini"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Train and evaluate a recommender with RecBole's trainer and evaluator. "
        "Plugin models (recbole_onevision.model) are looked up first, then RecBole's own.",
        epilog="Any other --key=value sets that RecBole/plugin config key, overriding YAML "
        "files; values are read as Python literals where they parse as one, so quote lists of names: "
        "--epochs=5 --topk=[5,10] \"--metrics=['Recall','NDCG']\" --gpu_id=0; ~ (or None) sets a "
        "key back to its YAML default of ~. "
        "Results are logged as a table and saved as JSON under checkpoint_dir (saved/).",
    )
    parser.add_argument("--model", "-m", default=DEFAULT_MODEL,
                        help=f"model class name, case-sensitive (default: {DEFAULT_MODEL})")
    parser.add_argument("--dataset", "-d", default=DEFAULT_DATASET,
                        help="dataset folder name under data_path (dataset/ unless overridden); MVShop "
                        f"scales are generated on first use (default: {DEFAULT_DATASET})")
    add_config_files(parser)
    parser.add_argument("--checkpoint", default=None,
                        help="evaluate this saved checkpoint (from saved/) on valid and test; no training")
    return parser


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """``parser``'s own arguments, and the rest as ``--key=value`` config overrides (the
    command lines of run.py, the benchmark, the tokenizer report and benchmarks/ scripts);
    anything else is a usage error."""
    args, overrides = parser.parse_known_args(argv)
    bad = [a for a in overrides if not (a.startswith("--") and "=" in a)]
    if bad:
        parser.error(f"unrecognised arguments {bad}: overrides must look like --key=value")
    return args, overrides


def config_file_list(value: str | None) -> list[str] | None:
    """``--config_files``: space- or comma-separated YAML files."""
    return value.replace(",", " ").split() if value else None


def add_config_files(parser: argparse.ArgumentParser) -> None:
    """The ``--config_files`` option of every command that reads config files: a list, or None."""
    parser.add_argument("--config_files", type=config_file_list, default=None,
                        help="space- or comma-separated YAML config files, as for run.py")


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args, overrides = parse_with_overrides(parser, argv)
    from recbole_onevision.quick_start import run  # heavy imports after --help

    try:
        return run(args.model, args.dataset, args.config_files, cmd_args=overrides, checkpoint=args.checkpoint)
    except (ValueError, KeyError, FileNotFoundError) as err:  # bad input: no traceback
        parser.exit(2, f"run.py: error: {err}\n")


if __name__ == "__main__":
    main()
