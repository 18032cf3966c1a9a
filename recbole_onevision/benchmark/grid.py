"""The grid's cells: one (dataset, model, seed) run each, in a folder named by its overrides and
by the digest of the plugin code the model runs, so a finished cell is reused and a cell of
other code or settings is never mistaken for one of this grid."""
from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import subprocess
import sys
import time

from recbole_onevision.benchmark.stats import QUALITY
from recbole_onevision.io import atomic_write_text

# --quick: one epoch (per stage: OneVision's other stage settings kept), a short VRQ fit; keys a
# model alone reads go to it alone (the config refuses keys a model does not know)
QUICK = ["--epochs=1", "--vrq_align_steps=50"]
QUICK_OWN = {"OneVision": ["--stages={'pretrain': {'epochs': 1}, 'sft': {'epochs': 1}, 'dpo': {'epochs': 1}}"]}

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(PLUGIN_DIR, "model")
MODEL_PACKAGE = "recbole_onevision.model"


def _imports(path: str) -> dict[str, str]:
    """Names the Python file at ``path`` imports -> the absolute module each comes from
    (relative imports resolved; ``import a.b`` maps ``a.b`` to itself)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = os.path.relpath(os.path.dirname(path), os.path.dirname(PLUGIN_DIR)).replace(os.sep, ".")
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update({alias.name: alias.name for alias in node.names})
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # from .x import y: relative to the file's package
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            found.update({alias.name: module for alias in node.names})
    return found


def _module_files(module: str) -> list[str]:
    """The files under ``model/`` that importing ``module`` (``recbole_onevision.model.<x>...``)
    runs: ``model/<x>.py``, or every file of the package ``model/<x>/`` (importing any module of
    a package runs its ``__init__``, which for a model package imports the whole model)."""
    parts = module.split(".")
    if module.startswith(MODEL_PACKAGE + ".") and len(parts) > 2:
        top = os.path.join(MODEL_DIR, parts[2])
        if os.path.isfile(top + ".py"):
            return [top + ".py"]
        if os.path.isfile(os.path.join(top, "__init__.py")):
            return sorted(os.path.join(folder, name) for folder, subfolders, names in os.walk(top)
                          if "__pycache__" not in folder for name in names if name.endswith(".py"))
    return []


def model_files(model: str) -> set[str]:
    """The files under ``model/`` that plugin model ``model`` runs: its module (or package) and
    what those import from there, transitively. Empty for RecBole's own models."""
    exported = _imports(os.path.join(MODEL_DIR, "__init__.py"))
    todo, files = [exported[model]] if model in exported else [], set()
    while todo:
        for path in _module_files(todo.pop()):
            if path in files:
                continue
            files.add(path)
            for name, module in _imports(path).items():
                if module == MODEL_PACKAGE:  # from recbole_onevision.model import <module or export>
                    own = f"{module}.{name}"
                    todo.append(own if _module_files(own) else exported.get(name, module))
                elif module.startswith(MODEL_PACKAGE + "."):
                    todo.append(module)
    return files


def code_digest(model: str | None = None) -> str:
    """A hash of the plugin's Python code and default configs (this benchmark package aside):
    what a result depends on besides the command line. With ``model``, other models' files
    (their modules and packages under ``model/`` and their ``properties/model/*.yaml``) are
    left out, so changing one model does not make the grid rerun every other one."""
    own = model_files(model) | {os.path.join(PLUGIN_DIR, "properties", "model", f"{model}.yaml")} if model else None
    model_specific = (MODEL_DIR, os.path.join(PLUGIN_DIR, "properties", "model"))
    shared_init = os.path.join(MODEL_DIR, "__init__.py")  # which models exist: every model's
    skipped = os.path.join(PLUGIN_DIR, "benchmark")
    digest = hashlib.sha1()
    for folder, subfolders, files in os.walk(PLUGIN_DIR):
        subfolders[:] = sorted(f for f in subfolders if f != "__pycache__" and os.path.join(folder, f) != skipped)
        specific = any(folder == d or folder.startswith(d + os.sep) for d in model_specific)
        for name in sorted(files):
            path = os.path.join(folder, name)
            if not name.endswith((".py", ".yaml")):
                continue
            if own is not None and specific and path != shared_init and path not in own:
                continue
            digest.update(os.path.relpath(path, PLUGIN_DIR).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:12]


def git_revision() -> str:
    """``git <commit>[, modified]`` of the checkout the plugin runs from, or ``""`` outside git."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=PLUGIN_DIR, capture_output=True, text=True,  # noqa: E731
                                        check=True, timeout=10).stdout.strip()
        commit, changes = run("rev-parse", "--short", "HEAD"), run("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"git {commit}{', modified' if changes else ''}"


def cell_prefix(out: str, dataset: str, model: str, seed: int) -> str:
    """What the folders of one (dataset, model, seed) cell start with, whatever code and settings."""
    return os.path.join(out, "cells", dataset, model, f"seed{seed}-")


def cell_dir(out: str, dataset: str, model: str, seed: int, overrides: list[str], code: str) -> str:
    """The cell's folder; named by the overrides and the ``code`` digest too, so a grid rerun
    with other settings or other code never reuses results made with different ones."""
    settings = hashlib.sha1("\n".join([code, *overrides]).encode()).hexdigest()[:8]
    return cell_prefix(out, dataset, model, seed) + settings


def finished_cell(out: str, dataset: str, model: str, seed: int, overrides: list[str], code: str) -> dict | None:
    """The cell's result if an earlier run finished it, else None."""
    result_file = os.path.join(cell_dir(out, dataset, model, seed, overrides, code), "result.json")
    if not os.path.isfile(result_file):
        return None
    with open(result_file) as f:
        return json.load(f)


def other_code_cells(out: str, dataset: str, model: str, seed: int, code: str) -> list[dict]:
    """Finished results of this cell made by other plugin code: what a report at this code
    cannot use, but can point to."""
    found = []
    for result_file in sorted(glob.glob(glob.escape(cell_prefix(out, dataset, model, seed)) + "*/result.json")):
        with open(result_file) as f:
            result = json.load(f)
        if result.get("plugin_code") != code:
            found.append(result)
    return found


def run_cell(out: str, dataset: str, model: str, seed: int, overrides: list[str], code: str, log) -> dict:
    """Run one cell in a child process unless its result exists; return the result."""
    folder = cell_dir(out, dataset, model, seed, overrides, code)
    result_file = os.path.join(folder, "result.json")
    done = finished_cell(out, dataset, model, seed, overrides, code)
    if done is not None:
        log(f"{dataset} / {model} / seed {seed}: done before, reusing {result_file}")
        return done
    os.makedirs(folder, exist_ok=True)
    command = [sys.executable, "-m", "recbole_onevision.cli", f"--model={model}", f"--dataset={dataset}",
               f"--seed={seed}", f"--checkpoint_dir={folder}", "--show_progress=False", *overrides]
    log(f"{dataset} / {model} / seed {seed}: running ({' '.join(command[3:])})")
    start = time.time()
    with open(os.path.join(folder, "run.log"), "w") as child_log:
        child = subprocess.Popen(command, stdout=child_log, stderr=subprocess.STDOUT)
        try:
            child.wait()
        except BaseException:  # interrupted or killed: stop the cell too, no orphan left training
            child.terminate()
            child.wait()
            raise
    if child.returncode:
        raise RuntimeError(f"{dataset} / {model} / seed {seed} failed (exit {child.returncode}); "
                           f"see {os.path.join(folder, 'run.log')}")
    written = sorted((f for f in os.listdir(folder) if f.endswith(".json") and f != "result.json"),
                     key=lambda f: os.path.getmtime(os.path.join(folder, f)))
    if not written:
        raise RuntimeError(f"{dataset} / {model} / seed {seed}: the run wrote no result JSON in {folder}")
    with open(os.path.join(folder, written[-1])) as f:
        result = json.load(f)
    result["wall_seconds"] = time.time() - start
    result["plugin_code"] = code
    result["plugin_git"] = git_revision()  # where to find that code again
    atomic_write_text(result_file, json.dumps(result, indent=2) + "\n")
    log(f"{dataset} / {model} / seed {seed}: test {QUALITY} {result['test_result'][QUALITY]:.4f} "
        f"in {result['wall_seconds']:.0f}s")
    return result


def split_overrides(overrides: list[str], models: list[str]) -> dict[str, list[str]]:
    """Each model's overrides: the shared ``--key=value`` ones, then its own ``--Model.key=value``
    ones as ``--key=value`` (so a cell's folder is the same as with the plain override)."""
    shared, own = [], {model: [] for model in models}
    for override in overrides:
        key, value = override[2:].split("=", 1)
        if "." not in key:
            shared.append(override)
            continue
        model, key = key.split(".", 1)
        if model not in own:
            raise ValueError(f"{override}: {model!r} is not one of --models ({', '.join(models)})")
        own[model].append(f"--{key}={value}")
    return {model: shared + own[model] for model in models}


def check_grid(models: list[str], datasets: list[str], per_model: dict[str, list[str]]) -> None:
    """Before the first cell: every model known, every dataset there (or an MVShop scale, made on
    demand) and each model's overrides valid for it, so a typo fails now, not hours in."""
    from recbole_onevision.cli import config_file_list
    from recbole_onevision.config import Config
    from recbole_onevision.preprocess import mvshop
    from recbole_onevision.quick_start import check_dataset_files
    from recbole_onevision.registry import get_model

    for model in models:
        get_model(model)
    for dataset in datasets:
        for model in models:
            files = [o.split("=", 1)[1] for o in per_model[model] if o.startswith("--config_files=")]
            rest = [o for o in per_model[model] if not o.startswith("--config_files=")]
            config = Config(model, dataset, config_file_list(files[-1]) if files else None, None, rest)
            if hasattr(config.model_class, "check_config"):
                config.model_class.check_config(config)
        if dataset[len("mvshop-"):] not in mvshop.SCALES:
            check_dataset_files(config)
