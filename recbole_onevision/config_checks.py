"""Configuration checks made before any work: a misspelt key, a value of the wrong type or
keys that contradict each other stop a run at once, naming the key, where it was set and what
was expected, instead of being ignored or failing after the tokenizer fit or an epoch."""
from __future__ import annotations

import difflib
import functools
import os

import yaml
from recbole.utils.argument_list import (dataset_arguments, evaluation_arguments, general_arguments,
                                         training_arguments)

# keys a user may set that RecBole reads without a default in its YAML files
RECBOLE_OPTIONAL = {"model", "dataset", "config_files", "nproc", "world_size", "offset", "ip", "port",
                    "local_rank", "benchmark_filename", "numerical_features", "discretization",
                    "kg_reverse_r", "entity_kg_num_interval", "relation_kg_num_interval", "wandb_project"}
# keys the plugin no longer reads, with what replaced them: refused with that pointer
REPLACED = {"encoder_layers": "layers", "decoder_layers": "layers", "visual_bias_scale": "visual_bias",
            "dense_loss_weight": "dense_head", "dense_readout": "dense_head", "dense_temperature": "dense_head",
            "dense_score_weight": "ranking", "dense_only": "ranking", "item_output": "ranking",
            "sid_loss_weight": "loss_weights", "visual_prior_weight": "loss_weights", "order_weight": "loss_weights",
            "stage_epochs": "stages", "stage_learning_rates": "stages", "dpo_beta": "stages",
            "dpo_sft_weight": "stages", "profile_fields": "PROFILE_FIELDS", "prune_keep_recent": "prune",
            "prune_prefix_levels": "prune", "prune_beam_margin": "prune"}
# keys whose value may also take another type than their default's (RecBole normalises them)
ALSO = {"topk": (int,), "metrics": (str,), "gpu_id": (int, str), "vrq_codebook_sizes": (int, list),
        "vrq_last_codes": (str,),
        "stages": (list, str), "prune": (bool,)}
# pickled datasets and dataloaders: RecBole would unpickle whatever file sits at their paths
PICKLING = ("save_dataset", "save_dataloaders", "dataset_save_path", "dataloaders_save_path")


def load_yaml(path: str, loader) -> dict | None:
    """A YAML file's mapping; a syntax error names the file and line."""
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        loaded = yaml.load(text, Loader=loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}{where}: not valid YAML ({problem})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(loaded).__name__}")
    return loaded


@functools.lru_cache(maxsize=None)  # the package's own files: read once per process
def plugin_keys(properties_dir: str) -> frozenset[str]:
    """Every key of the plugin's own YAML files (all its models' and datasets'): a dataset's
    properties may carry one model's settings and still be read by another model's run."""
    keys = set()
    for root, _, files in os.walk(properties_dir):
        for name in files:
            if name.endswith(".yaml"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    keys |= set(yaml.safe_load(f) or {})
    return frozenset(keys)


def check_metric_names(metrics, where: str) -> None:
    """Refused here, naming the metric: RecBole would raise NotImplementedError (a traceback)."""
    from recbole.evaluator.register import metrics_dict

    for metric in metrics if isinstance(metrics, (list, tuple)) else [metrics] if metrics else []:
        if str(metric).lower() not in metrics_dict:
            raise ValueError(f"{where}: config metrics: unknown metric {metric!r}; known (any case): "
                             + ", ".join(sorted(metrics_dict)))


def check_external(internal: dict, external: dict, sources: dict[str, str], properties_dir: str) -> None:
    """Every key a user set (``external``) is known (RecBole's, the plugin's or the model's), and
    its value has its default's type; every metric is registered (RecBole's or the plugin's)."""
    check_metric_names(external.get("metrics", internal.get("metrics")), sources.get("metrics", "config"))
    known = set(internal) | plugin_keys(properties_dir) | RECBOLE_OPTIONAL | set(
        general_arguments + training_arguments + evaluation_arguments + dataset_arguments)
    for key, value in external.items():
        where = sources.get(key, "config")
        if key in REPLACED:
            raise ValueError(f"{where}: config key {key!r} was replaced by {REPLACED[key]!r} "
                             "(recbole_onevision/properties/model/OneVision.yaml)")
        if key == "config_files":  # RecBole knows it, but reads it only from its own command line
            raise ValueError(f"{where}: config_files is not read as a config key here; give the files to the "
                             "command's own --config_files option (run.py, the benchmark, benchmarks/ scripts)")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]!r}?" if close else " (not a RecBole, plugin or model key)"
            raise ValueError(f"{where}: unknown config key {key!r}{hint}")
        if key in PICKLING and value:
            raise ValueError(f"{where}: config {key} is not supported: RecBole pickles datasets and "
                             "dataloaders, and the plugin never loads a pickle it did not write; leave it unset")
        _check_type(key, value, internal.get(key), where)


def _check_type(key: str, value, default, where: str) -> None:
    if value is None or default is None:
        return
    allowed = _types(default) + ALSO.get(key, ())
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if not ok:
        names = " or ".join(sorted({_name(t) for t in allowed}))
        raise ValueError(f"{where}: config {key}: expected {names} (as its default {default!r}), got {value!r}")


def _types(default) -> tuple:
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return (int, float)
    if isinstance(default, (list, tuple)):
        return (list, tuple)
    return (type(default),)


def _name(kind: type) -> str:
    return {bool: "True/False", int: "an integer", float: "a number", str: "a string", list: "a list",
            tuple: "a list", dict: "a mapping"}.get(kind, kind.__name__)


def check_evaluation(config) -> None:
    """``valid_metric`` is one of ``metrics``, at a K in ``topk`` for a top-k metric."""
    valid = str(config["valid_metric"] or "")
    name, _, k = valid.partition("@")
    metrics = [m.lower() for m in config["metrics"] or []]
    if name.lower() not in metrics:
        raise ValueError(f"config valid_metric: {valid!r} is not among metrics {config['metrics']}")
    if k and (not k.isdigit() or int(k) not in (config["topk"] or [])):
        raise ValueError(f"config valid_metric: {valid!r} needs its K in topk {config['topk']}")
    start = config["start_checkpoint"] if "start_checkpoint" in config else None
    if start and not os.path.isfile(str(start)):  # found now, not after the data load and VRQ fit
        raise ValueError(f"config start_checkpoint: no such file {str(start)!r}")


def check_topk(config, dataset) -> None:
    """Every K of ``topk`` fits the catalogue (checked once the items are known, before any fit)."""
    items = dataset.item_num - 1  # id 0 is padding
    largest = max(config["topk"] or [0])
    if largest > items:
        raise ValueError(f"config topk: {largest} is more than the dataset's {items} items")
