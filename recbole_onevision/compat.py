"""Every workaround for RecBole 1.2.1 on today's stack, in one place.

Decisions (tested in ``tests/test_compat.py``):

* ``recbole.quick_start`` is never imported. It imports ``ray`` at module level, and ray
  2.6 needs ``setuptools<81`` and NumPy 1.x. Everything it offers (``run_recbole``) is
  re-implemented in :mod:`recbole_onevision.quick_start`, so NumPy 2 stays usable.
* ``pandas<3``: pandas 3 changes string dtypes and breaks RecBole's atomic-file loading.
* ``recbole.model.sequential_recommender.sine`` switches on
  ``torch.autograd.set_detect_anomaly(True)`` when imported, and importing *any* RecBole
  sequential model imports it. Anomaly mode makes SASRec's training steps 1.6-1.7x slower
  (docs/results/speed.md), so :func:`import_recbole_model_module` switches it off again
  (opt back in with ``detect_anomaly: True`` in a config).
* ``Config.compatibility_settings`` assigns ``np.float = np.float_`` and similar, which
  fails on NumPy 2 (``np.float_`` is gone). :func:`install_numpy_aliases` restores the old
  aliases RecBole still uses (``np.float`` in its ranking metrics) as the builtin types they
  always meant, and only where NumPy lacks them.
* RecBole's ``overall.yaml`` samples one training negative by default and then refuses
  CE-loss models (SASRec's default) unless the user writes ``train_neg_sample_args: ~``.
  :func:`no_default_negatives_for_ce` drops the default for CE losses (not a user's choice).
* Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, and RecBole's
  checkpoints pickle the whole ``Config`` object, so ``Trainer.evaluate(load_best_model=
  True)`` fails. Instead of loading with ``weights_only=False`` (which would run arbitrary
  pickled code from any file handed to us), :class:`SafeCheckpointMixin` makes *our*
  checkpoints plain tensors, numbers and strings, which the safe loader accepts. Files from
  elsewhere still go through the safe loader unchanged.
"""
from __future__ import annotations

import importlib
import os
import time

import torch

from recbole_onevision.io import atomic_open, remove_orphans_in

# RecBole model packages, in the order RecBole's own ``get_model`` searches them.
RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


def install_numpy_aliases() -> None:
    """Old NumPy aliases RecBole 1.2.1 uses, e.g. ``np.float`` in ``evaluator/metrics.py``."""
    import numpy as np

    for name, value in {"bool": np.bool_, "int": int, "float": float, "complex": complex,
                        "object": object, "str": str, "long": int, "unicode": str}.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def no_default_negatives_for_ce(final: dict, external: dict) -> None:
    """CE needs no sampled negatives: drop RecBole's default unless the user set one."""
    if final.get("loss_type") == "CE" and "train_neg_sample_args" not in external:
        final["train_neg_sample_args"] = None


def import_recbole_model_module(module_path: str):
    """Import a RecBole model module and switch off the anomaly mode ``sine.py`` turns on.

    Switched off, not restored: the flag may have been set by an earlier plain import of
    RecBole's sequential models. ``Config`` then applies ``detect_anomaly`` from the config.
    """
    module = importlib.import_module(module_path)
    torch.autograd.set_detect_anomaly(False)
    return module


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never half-written."""
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)  # default protocol: the safe loader rejects 4


def _plain_config(config) -> dict:
    """The part of a RecBole ``Config`` a checkpoint needs, as plain values.

    RecBole reads only ``checkpoint["config"]["model"]`` back (in ``resume_checkpoint``);
    ``overrides`` (every setting the run was given, config files' included) and the absolute
    ``data_path`` setting rebuild the run's config for search (:mod:`recbole_onevision.search`); the
    full config text is kept for people inspecting the file.
    """
    overrides = {k: v for k, v in getattr(config, "external_config_dict", {}).items()
                 if k not in ("model", "dataset", "data_path")}
    return {"model": str(config["model"]), "dataset": str(config["dataset"]),
            # RecBole's data_path ends with the dataset's folder; the setting is its parent
            "data_path": os.path.dirname(os.path.abspath(config["data_path"])), "overrides": _plain(overrides), "text": str(config)}


def _plain(value):
    """``value`` with only what torch's safe loader reads back (containers, str, numbers, None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def load_checkpoint(path: str, map_location=None) -> dict:
    """Load a checkpoint with torch's safe (``weights_only``) loader, explaining failures."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file not found: {path}") from None
    except (OSError, RuntimeError, EOFError) as err:  # torch's zip reader on a cut file
        raise ValueError(f"{path}: not a readable checkpoint ({err}); it may be truncated or not a "
                         "checkpoint at all") from None
    except Exception as err:  # torch raises UnpicklingError subclasses that vary by version
        if "weights_only" not in str(err) and "Unsupported global" not in str(err):
            raise
        raise ValueError(
            f"{path}: refusing to unpickle arbitrary objects from this checkpoint. It was "
            "probably written by stock RecBole, which pickles its whole Config. If you trust "
            "the file, load it with torch.load(path, weights_only=False) and save "
            "{'state_dict': ..., 'other_parameter': ...} again."
        ) from err


def load_weights(model, checkpoint: dict, path: str, model_name: str) -> None:
    """Load ``checkpoint``'s weights into ``model`` (a ``model_name``), refusing, with one
    message naming ``path``, a checkpoint of another model or one whose weights do not fit."""
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    recorded = config.get("model") if isinstance(config, dict) else None
    if str(recorded).lower() != model_name.lower():
        raise ValueError(f"{path}: a checkpoint of model {recorded or '(unrecorded)'}, but this run is {model_name}")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError) as err:  # torch's missing/unexpected keys, size mismatches
        detail = str(err).strip().splitlines()
        raise ValueError(f"{path}: its weights do not fit this {model_name} ({detail[-1].strip() if detail else err}); "
                         "load it with the settings it was trained with") from None
    model.load_other_parameter(checkpoint.get("other_parameter"))


class SafeCheckpointMixin:
    """Trainer mixin: checkpoints hold only what torch's safe loader accepts, written atomically.

    Works for every RecBole trainer derived from ``recbole.trainer.Trainer`` (they share
    ``_save_checkpoint``, ``resume_checkpoint`` and ``evaluate``).
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        # RecBole names checkpoints <model>-<local time to the second>.pth, so two runs started
        # in the same second (e.g. one per dataset, side by side) overwrite each other's.
        self.saved_model_file = unique_checkpoint_path(self.checkpoint_dir, config["model"], config["dataset"])
        # a run killed while saving leaves a temporary no later run would write over
        remove_orphans_in(self.checkpoint_dir, ".pth")

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": _plain_config(self.config),
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }
        atomic_torch_save(state, saved_model_file)
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        load_weights(self.model, checkpoint, resume_file, self.config["model"])
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and eval_data:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            load_weights(self.model, checkpoint, checkpoint_file, self.config["model"])
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, False, model_file, show_progress)


def unique_checkpoint_path(directory: str, model: str, dataset: str) -> str:
    """``<directory>/<model>-<dataset>-<time>-<pid>[-n].pth``, a name no other run has taken."""
    stem = os.path.join(directory, f"{model}-{dataset}-{time.strftime('%b-%d-%Y_%H-%M-%S')}-{os.getpid()}")
    path, n = f"{stem}.pth", 1
    while os.path.exists(path) or path in _TAKEN:
        path, n = f"{stem}-{n}.pth", n + 1
    _TAKEN.add(path)
    return path


_TAKEN: set[str] = set()  # names handed out in this process, saved to or not
