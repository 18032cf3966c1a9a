"""Train and evaluate one model on one dataset: RecBole's ``run_recbole``, plugin-aware.

RecBole's own ``recbole.quick_start`` is never imported (it drags in ``ray``; see
:mod:`recbole_onevision.compat`).
"""
from __future__ import annotations

import json
import os
import resource
import shlex
import time
from logging import getLogger
from typing import Callable, NamedTuple

import numpy as np
import torch

from recbole.utils import get_environment, init_logger, init_seed, set_color

from recbole_onevision import distributed
from recbole_onevision.compat import load_checkpoint, load_weights
from recbole_onevision.config import Config
from recbole_onevision.config_checks import check_topk
from recbole_onevision.io import atomic_write_text
from recbole_onevision.metrics import check_dataset as check_metric_fields
from recbole_onevision.preprocess import mvshop
from recbole_onevision.registry import create_dataset, data_preparation, get_trainer


def check_dataset_files(config) -> None:
    """Fail early, naming the folder, when the dataset's ``.inter`` file is missing."""
    data_path, name = config["data_path"], config["dataset"]
    inter = os.path.join(data_path, f"{name}.inter")
    if os.path.isfile(inter):
        return
    root = os.path.dirname(os.path.normpath(data_path))
    found = sorted(
        d for d in (os.listdir(root) if os.path.isdir(root) else [])
        if os.path.isfile(os.path.join(root, d, f"{d}.inter"))
    )
    raise FileNotFoundError(
        f"dataset {name!r}: {inter} not found. Datasets under {root or '.'}: "
        f"{', '.join(found) or '(none)'}; generated on demand: mvshop-mini, mvshop-small, "
        "mvshop-large; RecBole bundles ml-100k. Convert the Amazon files with "
        "`python -m recbole_onevision.preprocess.convert s3rec --help`."
    )


def result_table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per split, one column per metric."""
    metrics = list(next(iter(rows.values())))
    lines = ["| split | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for split, values in rows.items():
        lines.append(f"| {split} | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
    return "\n".join(lines)


def peak_rss_gb() -> float:
    """This process's peak resident memory. Linux's ``VmHWM`` first: ``ru_maxrss`` survives
    exec, so a child started by a large parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


@torch.no_grad()
def single_query_latency(model, test_data, queries: int, warmup: int = 5) -> dict | None:
    """p50/p95 milliseconds of ``full_sort_predict`` on one test row at a time (the first
    ``queries`` rows, after ``warmup`` calls); None when ``queries`` is 0."""
    if queries <= 0:
        return None
    model.eval()
    rows = []
    for batch in test_data:
        interaction = batch[0].to(model.device)
        rows += [interaction[i:i + 1] for i in range(len(interaction))]
        if len(rows) >= queries + warmup:
            break
    times = []
    cuda = torch.device(model.device).type == "cuda"
    for n, row in enumerate(rows[:queries + warmup]):
        start = time.perf_counter()
        model.full_sort_predict(row)
        if cuda:  # kernels run asynchronously: wait for this query's before reading the clock
            torch.cuda.synchronize(model.device)
        if n >= warmup:
            times.append(1e3 * (time.perf_counter() - start))
    if not times:
        return None
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)), "queries": len(times)}


SEARCHABLE = ("OneVision", "MCA", "VisualKNN")  # the models recbole_onevision.search serves


def result_summary(result: dict) -> str:
    """What a run ends with: the valid/test table, where the results went and, after training,
    the command that evaluates the best checkpoint again without training."""
    table = result_table({"valid": result["best_valid_result"], "test": result["test_result"]})
    processes = f" in {result['processes']} processes" if result.get("processes", 1) > 1 else ""
    lines = [set_color("results", "yellow") + f" ({result['model']} on {result['dataset']}, "
             f"trained {result['train_seconds']:.0f}s{processes})", table, f"results saved to {result['results_file']}"]
    if result["checkpoint"] and not result["evaluated_only"]:
        args = result["run_args"] + [f"--checkpoint={result['checkpoint']}"]
        lines += [f"best checkpoint: {result['checkpoint']}",
                  "re-evaluate it: python run.py " + " ".join(map(shlex.quote, args))]
        if result["model"] in SEARCHABLE:
            lines.append(f"search with it: python -m recbole_onevision.search --checkpoint {shlex.quote(result['checkpoint'])}"
                         " --query <a query photo id> (or --image <photo> / --embedding <file.npy>) [--user <id>]")
    return "\n".join(lines)


def run_args(config, config_file_list=None, config_dict=None, cmd_args=None) -> list[str]:
    """``run.py`` arguments that rebuild this run's config: model, dataset, config files and
    every override (``config_dict`` entries as Python literals, which the config parses back)."""
    args = [f"--model={config['model']}", f"--dataset={config['dataset']}"]
    if config_file_list:
        args.append("--config_files=" + ",".join(config_file_list))
    args += [f"--{key}={value!r}" for key, value in (config_dict or {}).items()]
    return args + [a for a in cmd_args or [] if not a.startswith("--checkpoint=")]


class Trained(NamedTuple):
    """What :func:`load_trained` gives."""
    config: Config
    model: torch.nn.Module
    trainer: object
    splits: tuple  # (train, valid, test) data loaders
    before_split: object  # what its ``before_split`` returned (None without one)


def load_trained(model, dataset, checkpoint: str, config_file_list=None, config_dict=None, cmd_args=None,
                 before_split: Callable | None = None) -> Trained:
    """For scripts that re-evaluate a trained checkpoint (any model ``run.py`` trains): its
    config, data and model (weights and other parameters, e.g. Pop's counts, loaded; in eval
    mode) with its trainer. Pass the overrides the checkpoint was trained with, so the same SIDs
    are rebuilt. ``before_split(config, dataset)`` reads the dataset as loaded: RecBole's split
    sorts it in place, by time for general models and by user then time for sequential ones."""
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint: no such file {checkpoint!r}")
    config = Config(model, dataset, config_file_list, {"show_progress": False, **(config_dict or {})},
                    cmd_args=cmd_args)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    data = create_dataset(config)
    extra = before_split(config, data) if before_split is not None else None
    splits = data_preparation(config, data)
    trained = config.model_class(config, splits[0]._dataset).to(config["device"])
    load_weights(trained, load_checkpoint(checkpoint, map_location=config["device"]), checkpoint, config["model"])
    trained.eval()
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, trained)
    return Trained(config, trained, trainer, splits, extra)


def run(model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=None,
        saved=True, checkpoint: str | None = None) -> dict:
    """Build config, data, model and trainer; train; test on the best validation checkpoint.

    With ``checkpoint`` (a file this plugin's trainers wrote) nothing is trained: the
    checkpoint is evaluated on the validation and test splits. With ``nproc`` > 1 (or a
    ``world_size``) the work is shared by that many processes (:mod:`recbole_onevision.distributed`).
    Returns RecBole's result dict plus ``train_seconds``, ``config`` and ``results_file``.
    """
    config = Config(model, dataset, config_file_list, config_dict, cmd_args)
    args = run_args(config, config_file_list, config_dict, cmd_args)
    spec = distributed.processes(config)
    if spec is None:
        return _run(config, args, saved, checkpoint)
    # bad settings and missing data stop the run here, once; data is generated once, not by each process
    if hasattr(config.model_class, "check_config"):
        config.model_class.check_config(config)
    mvshop.ensure_for(config)
    check_dataset_files(config)
    # resolved here (a free port), so every process gets the same: command-line values would win over them
    cmd_args = [a for a in cmd_args or [] if a[2:].partition("=")[0] not in distributed.KEYS]
    result = distributed.spawn(_run_process, spec, (model, dataset, config_file_list, config_dict, cmd_args,
                                                    saved, checkpoint, args))
    result["config"] = config
    return result


def _run_process(rank, queue, spec, model, dataset, config_file_list, config_dict, cmd_args, saved, checkpoint,
                 args):
    """One of several processes (:func:`distributed.spawn`); local rank 0 hands its result back."""
    config = Config(model, dataset, config_file_list, {**(config_dict or {}), **spec, "local_rank": rank}, cmd_args)
    try:
        result = _run(config, args, saved, checkpoint)
    except (ValueError, KeyError, FileNotFoundError) as err:  # bad input: the parent raises it as one process would
        queue.put(err)
        raise
    finally:
        torch.distributed.destroy_process_group()
    if rank == 0:
        del result["config"]  # the parent has its own; this one holds the process's device
        queue.put(result)


def _run(config, args: list[str], saved: bool, checkpoint: str | None) -> dict:
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    if hasattr(config.model_class, "check_config"):  # a plugin model's own checks, before any work
        config.model_class.check_config(config)
    # bundled data is generated on first use (and reused after: the generator checks its spec)
    mvshop.ensure_for(config)
    check_dataset_files(config)

    with distributed.first_process_first(config):  # the SIDs fitted (data_preparation) and cached once
        dataset = create_dataset(config)
        logger.info(dataset)
        check_topk(config, dataset)  # before the tokenizer is fitted on the split
        check_metric_fields(config, dataset)  # before training, not after the first epoch
        train_data, valid_data, test_data = data_preparation(config, dataset)
    if distributed.several(config) and getattr(dataset, "item_sid", None) is not None:
        distributed.same_on_every_rank(dataset.item_sid, "the fitted SIDs")

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    # the class Config resolved; looking it up again would reset ``detect_anomaly``
    model = config.model_class(config, train_data._dataset).to(config["device"])
    logger.info(model)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    # named as the run's checkpoint (time, process id, a counter): two runs never share one
    results_file = os.path.splitext(trainer.saved_model_file)[0] + ".json"

    start = time.time()
    if checkpoint:
        best_valid_result = trainer.evaluate(valid_data, model_file=checkpoint,
                                             show_progress=config["show_progress"])
        best_valid_score = best_valid_result[config["valid_metric"].lower()]
        trainer.saved_model_file = checkpoint
        test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=config["show_progress"])
        train_seconds = 0.0
    else:
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"]
        )
        train_seconds = time.time() - start
        test_result = trainer.evaluate(
            test_data, load_best_model=saved, show_progress=config["show_progress"]
        )
    writes = distributed.writes_files(config)
    latency = single_query_latency(trainer.model, test_data, int(config["latency_queries"] or 0) if writes else 0)
    logger.info("The running environment of this training is as follows:\n"
                + get_environment(config).draw())

    result = {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": dict(best_valid_result or {}),
        "test_result": dict(test_result or {}),
        "train_seconds": train_seconds,
        "settings": {k: config[k] for k in ("seed", "epochs", "train_batch_size", "learning_rate",
                                            "MAX_ITEM_LIST_LENGTH", "loss_type", "eval_args")},
        "checkpoint": trainer.saved_model_file if saved or checkpoint else None,
        "evaluated_only": bool(checkpoint),
        "latency_ms": latency,
        "peak_rss_gb": peak_rss_gb(),
        "run_args": args,
        "processes": config["world_size"] if distributed.several(config) else 1,
    }
    if writes:
        atomic_write_text(results_file, json.dumps(result, indent=2, default=float) + "\n")
    result["results_file"] = results_file
    result["config"] = config

    if result["test_result"]:
        logger.info(result_summary(result))
    return result
