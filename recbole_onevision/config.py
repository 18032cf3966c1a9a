"""``Config``: RecBole's configurator, taught where the plugin keeps models and defaults.

Precedence, lowest first: RecBole's defaults (overall, model, dataset, model-type quick
start) < the plugin's ``properties/overall.yaml`` < the plugin's ``properties/model/<Model>.yaml``
< the plugin's ``properties/dataset/<dataset>.yaml`` < config files < ``config_dict`` <
command-line ``--key=value`` overrides.
"""
from __future__ import annotations

import os

import torch
from recbole.config import Config as RecBoleConfig

from recbole_onevision import metrics, registry  # noqa: F401 (metrics: registers them with RecBole)
from recbole_onevision.compat import install_numpy_aliases, no_default_negatives_for_ce


YAML_NULLS = {"~", "null", "Null", "NULL"}


class Config(RecBoleConfig):
    """RecBole ``Config`` that resolves plugin models and plugin YAML defaults.

    Unlike RecBole's, it does not read ``sys.argv`` behind the caller's back: pass the
    ``--key=value`` strings you want applied as ``cmd_args`` (``run.py`` does).
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 cmd_args: list[str] | None = None):
        self._cmd_args = list(cmd_args or [])
        for path in config_file_list or []:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"config file not found: {path}")
        super().__init__(model, dataset, config_file_list, config_dict)
        # sine.py may have switched anomaly detection on when the model was imported
        torch.autograd.set_detect_anomaly(bool(self["detect_anomaly"]))

    def compatibility_settings(self):
        install_numpy_aliases()

    def _load_cmd_line(self):
        overrides = {}
        for arg in self._cmd_args:
            key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
            if not key or not sep:
                raise ValueError(f"command-line override {arg!r}: expected --key=value")
            if key in overrides and overrides[key] != value:
                raise ValueError(f"command-line override --{key} given twice with different values")
            overrides[key] = value
        converted = self._convert_config_dict(overrides)
        # YAML's null spellings mean None here too (RecBole would keep them as strings), so
        # the documented `key: ~` defaults can be set back from the command line
        return {key: None if isinstance(value, str) and value in YAML_NULLS else value
                for key, value in converted.items()}

    def _get_model_and_dataset(self, model, dataset):
        model = model if model is not None else self.external_config_dict.get("model")
        if model is None:
            raise KeyError("no model given: pass --model=NAME (or model: in a config file)")
        dataset = dataset if dataset is not None else self.external_config_dict.get("dataset")
        if dataset is None:
            raise KeyError("no dataset given: pass --dataset=NAME (or dataset: in a config file)")
        if isinstance(model, str):
            return model, registry.get_model(model), dataset
        return model.__name__, model, dataset

    def _get_final_config_dict(self):
        final = super()._get_final_config_dict()
        no_default_negatives_for_ce(final, self.external_config_dict)
        return final

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for path in (
            os.path.join(registry.PROPERTIES_DIR, "overall.yaml"),
            registry.model_properties_file(model),
            registry.dataset_properties_file(dataset),
        ):
            if path:
                self._update_internal_config_dict(path)
