"""Plugin trainers: ``<Model>Trainer`` here is picked for ``<Model>`` by the registry."""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from recbole.trainer import Trainer
from recbole.utils import init_seed

from recbole_onevision.compat import atomic_torch_save, load_checkpoint, load_weights

STAGES = ("pretrain", "sft", "dpo")  # in the order the paper trains them
STAGE_KEYS = {"pretrain": {"epochs", "learning_rate"}, "sft": {"epochs", "learning_rate"},
              "dpo": {"epochs", "learning_rate", "beta", "sft_weight"}}


class Stage(NamedTuple):
    name: str
    epochs: int
    learning_rate: float
    settings: dict  # the stage's own (DPO: beta, sft_weight)


def stage_plan(config) -> tuple[Stage, ...]:
    """The ``stages`` mapping (merged over its defaults by :mod:`recbole_onevision.config`),
    checked: known stages in training order, each with at least one epoch, known keys only."""
    stages = config["stages"]
    if not isinstance(stages, dict) or not stages:
        raise ValueError(f"config stages: expected some of {', '.join(STAGES)} (a list, or a mapping stage -> "
                         f"settings), got {stages!r}")
    plan = []
    for name, settings in stages.items():
        if name not in STAGES:
            raise ValueError(f"config stages: unknown stage {name!r}; expected some of {', '.join(STAGES)}")
        settings = dict(settings or {})
        unknown = sorted(set(settings) - STAGE_KEYS[name])
        if unknown:
            raise ValueError(f"config stages: {name} has unknown keys {unknown}; expected some of "
                             f"{sorted(STAGE_KEYS[name])}")
        epochs = settings.pop("epochs", None)
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise ValueError(f"config stages: {name} needs epochs, an integer >= 1 (leave the stage out "
                             f"instead), got {epochs!r}")
        learning_rate = settings.pop("learning_rate", config["learning_rate"])
        try:
            learning_rate = float(learning_rate)
        except (TypeError, ValueError):
            learning_rate = float("nan")
        if not learning_rate > 0:
            raise ValueError(f"config stages: {name} learning_rate: expected a number > 0, got {learning_rate!r}")
        plan.append(Stage(name, epochs, learning_rate, settings))
    order = [STAGES.index(stage.name) for stage in plan]
    if order != sorted(order):
        raise ValueError(f"config stages: expected them in training order ({', '.join(STAGES)}), got {list(stages)}")
    return tuple(plan)


class OneVisionTrainer(Trainer):
    """Runs OneVision's training stages (``stages``, e.g. ``[pretrain, sft, dpo]``) one after
    another through RecBole's own ``fit`` loop.

    Each stage has its own epochs and learning rate (:func:`stage_plan`), fresh optimizer, early
    stopping on the validation metric and checkpoint file (``<checkpoint>-<stage>.pth``); the
    next stage starts from the previous stage's best
    checkpoint. Every stage reseeds the random streams (``seed`` + the stage's index), so a run
    resumed from a stage checkpoint (``start_checkpoint``) trains exactly as the uninterrupted run
    did: the checkpoint records the stages its weights went through, and those are skipped
    whatever ``stages`` lists.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.stage_files: dict[str, str] = {}
        self.stage_results: dict[str, tuple] = {}

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        plan = stage_plan(self.config)
        runnable = [stage for stage in plan if self.model.supports_stage(stage.name)]
        if not runnable:
            raise ValueError(f"config stages: none of {[s.name for s in plan]} can run here (pretrain needs query "
                             "photos; the dataset has none, or visual_tokens is 0)")
        start = self.config["start_checkpoint"]
        if start:
            runnable = self._resume_from(str(start), runnable)
        base = os.path.splitext(self.saved_model_file)[0]
        result = (self.best_valid_score, None)
        for stage in plan:
            if not self.model.supports_stage(stage.name):
                self.logger.warning(f"OneVision: skipping stage {stage.name!r} (no query photos: the dataset has "
                                    "none, or visual_tokens is 0)")
        for stage in runnable:
            seed = self.config["seed"] + STAGES.index(stage.name)
            init_seed(seed, self.config["reproducibility"])
            train_data.generator.manual_seed(seed)
            self.model.set_stage(stage.name)
            self.epochs = stage.epochs
            # RecBole fixes eval_step once, from epochs: a shorter stage would never be validated
            self.eval_step = min(int(self.config["eval_step"]), self.epochs)
            self.optimizer = self._build_optimizer(learning_rate=stage.learning_rate)
            self.start_epoch, self.cur_step = 0, 0
            self.best_valid_score = -np.inf if self.valid_metric_bigger else np.inf
            self.best_valid_result = None
            self.saved_model_file = f"{base}-{stage.name}.pth"
            self.logger.info(f"OneVision stage {stage.name}: {self.epochs} epochs, learning rate {stage.learning_rate}")
            result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            self.stage_results[stage.name] = result
            if saved and os.path.isfile(self.saved_model_file):
                self.stage_files[stage.name] = self.saved_model_file
                best = load_checkpoint(self.saved_model_file, map_location=self.device)
                self.model.load_state_dict(best["state_dict"])
                # written mid-stage (its best epoch so far); only now has it finished the stage
                from recbole_onevision.model.onevision import checkpoint  # here: the model imports us

                checkpoint.mark_finished(best["state_dict"], stage.name)
                atomic_torch_save(best, self.saved_model_file)
            self.model.stages_done = (*self.model.stages_done, stage.name)
            self.logger.info(f"OneVision stage {stage.name} done: best valid {self.valid_metric} {result[0]:.4f}")
        return result

    def _resume_from(self, start: str, runnable: list) -> list:
        """Load ``start_checkpoint``; the stages of ``runnable`` it has not finished."""
        from recbole_onevision.model.onevision import checkpoint  # here: the model imports us

        saved = load_checkpoint(start, map_location=self.device)
        load_weights(self.model, saved, start, self.config["model"])
        done = checkpoint.stages_of(saved["state_dict"])
        self.model.stages_done = done
        self.logger.info(f"OneVision: starting from {start} (stages done: {', '.join(done) or 'none recorded'})")
        for stage in [s for s in runnable if s.name in done]:
            self.logger.info(f"OneVision: skipping stage {stage.name!r}: {start} has done it")
        running = checkpoint.running_stage(saved["state_dict"])
        if running:
            self.logger.warning(f"OneVision: {start} was saved in the middle of stage {running!r} (its best epoch "
                                f"so far): that stage runs again in full from these weights. To end where an "
                                "uninterrupted run ends, start from the previous stage's checkpoint")
        left = [s for s in runnable if s.name not in done]
        if not left:
            raise ValueError(f"config start_checkpoint: {start} has done every stage of config stages "
                             f"({', '.join(s.name for s in runnable)}): nothing to train; evaluate it with "
                             f"--checkpoint={start}")
        return left
