"""Plugin trainers: ``<Model>Trainer`` here is picked for ``<Model>`` by the registry."""
from __future__ import annotations

import os

import numpy as np
from recbole.trainer import Trainer
from recbole.utils import init_seed

from recbole_onevision.compat import load_checkpoint


class OneVisionTrainer(Trainer):
    """Runs OneVision's training stages (``stages``, e.g. ``[pretrain, sft, dpo]``) one after
    another through RecBole's own ``fit`` loop.

    Each stage has its own epochs (``stage_epochs``), learning rate (``stage_learning_rates``),
    fresh optimizer, early stopping on the validation metric and checkpoint file
    (``<checkpoint>-<stage>.pth``); the next stage starts from the previous stage's best
    checkpoint. Every stage reseeds the random streams (``seed`` + the stage's index), so a run
    resumed from a stage checkpoint (``start_checkpoint``, with ``stages`` listing the stages
    still to run) trains exactly as the uninterrupted run did.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.stage_files: dict[str, str] = {}
        self.stage_results: dict[str, tuple] = {}

    def _stage_setting(self, key: str, stage: str, default):
        values = self.config[key] or {}
        if not isinstance(values, dict):
            raise ValueError(f"config {key}: expected a mapping stage -> value, got {values!r}")
        return values.get(stage, default)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        from recbole_onevision.model.onevision import STAGES

        stages = self.config["stages"] or ["sft"]
        if isinstance(stages, str):  # --stages=[sft,dpo] or --stages=sft from the command line
            stages = [s.strip(" '\"") for s in stages.strip("[]").split(",") if s.strip()]
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise ValueError(f"config stages: expected some of {', '.join(STAGES)}, got {stages!r}")
        runnable = [s for s in stages if self.model.supports_stage(s)]
        if not runnable:
            raise ValueError(f"config stages: none of {stages} can run here (pretrain needs query photos; "
                             "the dataset has none, or visual_tokens is 0)")
        epochs = {s: int(self._stage_setting("stage_epochs", s, self.config["epochs"])) for s in runnable}
        short = {s: n for s, n in epochs.items() if n < 1}
        if short:  # checked before any stage trains
            raise ValueError(f"config stage_epochs: every stage run needs at least 1 epoch (leave the stage "
                             f"out of stages instead), got {short}")
        start = self.config["start_checkpoint"]
        if start:
            checkpoint = load_checkpoint(str(start), map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.logger.info(f"OneVision: starting from {start}")
        base = os.path.splitext(self.saved_model_file)[0]
        result = (self.best_valid_score, None)
        for stage in [s for s in stages if s not in runnable]:
            self.logger.warning(f"OneVision: skipping stage {stage!r} (no query photos: the dataset has none, or visual_tokens is 0)")
        for stage in runnable:
            seed = self.config["seed"] + STAGES.index(stage)
            init_seed(seed, self.config["reproducibility"])
            train_data.generator.manual_seed(seed)
            self.model.set_stage(stage)
            self.epochs = epochs[stage]
            # RecBole fixes eval_step once, from epochs: a shorter stage would never be validated
            self.eval_step = min(int(self.config["eval_step"]), self.epochs)
            learning_rate = float(self._stage_setting("stage_learning_rates", stage, self.learning_rate))
            self.optimizer = self._build_optimizer(learning_rate=learning_rate)
            self.start_epoch, self.cur_step = 0, 0
            self.best_valid_score = -np.inf if self.valid_metric_bigger else np.inf
            self.best_valid_result = None
            self.saved_model_file = f"{base}-{stage}.pth"
            self.logger.info(f"OneVision stage {stage}: {self.epochs} epochs, learning rate {learning_rate}")
            result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            self.stage_results[stage] = result
            if saved and os.path.isfile(self.saved_model_file):
                self.stage_files[stage] = self.saved_model_file
                best = load_checkpoint(self.saved_model_file, map_location=self.device)
                self.model.load_state_dict(best["state_dict"])
            self.logger.info(f"OneVision stage {stage} done: best valid {self.valid_metric} {result[0]:.4f}")
        return result
