"""``Config``: RecBole's configurator, taught where the plugin keeps models and defaults.

Precedence, lowest first: RecBole's defaults (overall, model, dataset, model-type quick
start) < the plugin's ``properties/overall.yaml`` < the plugin's ``properties/model/<Model>.yaml``
< the plugin's ``properties/dataset/<dataset>.yaml`` < ``<data_path>/<dataset>/<dataset>.yaml``
(written by a converter beside the data: the plugin protocol its ``protocol:`` names, then its
own keys) < config files < ``config_dict`` < command-line ``--key=value`` overrides.
"""
from __future__ import annotations

import os
from logging import getLogger

import torch
from recbole.config import Config as RecBoleConfig

from recbole_onevision import metrics, registry  # noqa: F401 (metrics: registers them with RecBole)
from recbole_onevision.compat import install_numpy_aliases, no_default_negatives_for_ce
from recbole_onevision.config_checks import check_evaluation, check_external, load_yaml


YAML_NULLS = {"~", "null", "Null", "NULL"}
# mapping-valued keys: a layer (a YAML file, config_dict, the command line) that sets part of
# one changes only the entries it names, so `--dense_head={'temperature': 0.1}` keeps the weight
MERGED_KEYS = ("dense_head", "loss_weights", "prune", "recall_index_params", "stages")


def merge_setting(key: str, default, value):
    """``value`` of a :data:`MERGED_KEYS` key over its ``default``. ``stages`` is special: the
    stages named (a list, or the keys of a mapping) are exactly those that run, each with its
    default settings updated by the mapping's; ``prune: True/False`` switches pruning alone."""
    if key == "stages":
        return merge_stages(default if isinstance(default, dict) else {}, value)
    if key == "prune" and isinstance(value, bool):
        value = {"enabled": value}
    if isinstance(default, dict) and isinstance(value, dict):
        return {**default, **value}
    return value


def merge_stages(default: dict, value):
    if isinstance(value, str):  # --stages=[sft,dpo] or --stages=sft (names do not parse as literals)
        value = [s.strip(" '\"") for s in value.strip("[]").split(",") if s.strip(" '\"")]
    if isinstance(value, (list, tuple)):
        return {name: dict(default.get(name) or {}) for name in value}
    if isinstance(value, dict):
        return {name: {**(default.get(name) or {}), **(settings or {})} for name, settings in value.items()}
    return value


def layer(target: dict, new: dict | None) -> dict:
    """``target`` updated by ``new``, merging :data:`MERGED_KEYS`."""
    for key, value in (new or {}).items():
        target[key] = merge_setting(key, target[key], value) if key in MERGED_KEYS and key in target else value
    return target


class Config(RecBoleConfig):
    """RecBole ``Config`` that resolves plugin models and plugin YAML defaults.

    Unlike RecBole's, it does not read ``sys.argv`` behind the caller's back: pass the
    ``--key=value`` strings you want applied as ``cmd_args`` (``run.py`` does).
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 cmd_args: list[str] | None = None):
        self._cmd_args = list(cmd_args or [])
        self._sources = {key: "config_dict" for key in config_dict or {}}  # where each key was set
        for path in config_file_list or []:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"config file not found: {path}")
        super().__init__(model, dataset, config_file_list, config_dict)
        check_evaluation(self)
        from recbole_onevision.model.ann_recall import recall_index_settings

        recall_index_settings(self)  # a bad recall_index stops the run before the data loads
        # sine.py may have switched anomaly detection on when the model was imported
        torch.autograd.set_detect_anomaly(bool(self["detect_anomaly"]))

    def compatibility_settings(self):
        install_numpy_aliases()

    def _init_device(self):
        if "local_rank" not in self.final_config_dict:  # one process: RecBole's own choice
            return super()._init_device()
        where = self._sources.get("local_rank", "config_dict")
        if where != "config_dict":  # only the process starter (run(), RecBole's run_recboles) passes it
            raise ValueError(f"{where}: config local_rank is given to each process run.py starts (nproc); "
                             "leave it unset")
        # one of several processes: RecBole's init knows NCCL on GPUs only; this adds gloo on CPUs
        from recbole_onevision.distributed import join_group

        join_group(self.final_config_dict)

    def _load_cmd_line(self):
        overrides = {}
        for arg in self._cmd_args:
            key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
            if not key or not sep:
                raise ValueError(f"command-line override {arg!r}: expected --key=value")
            if key in overrides and overrides[key] != value:
                raise ValueError(f"command-line override --{key} given twice with different values")
            overrides[key] = value
            self._sources[key] = f"command line --{key}"
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

    def _load_config_files(self, file_list):
        merged = {}
        for path in file_list or []:
            loaded = load_yaml(path, self.yaml_loader) or {}
            # a later file wins over an earlier one; config_dict and the command line over both
            self._sources.update({key: path for key in loaded if self._sources.get(key) != "config_dict"})
            layer(merged, loaded)
        return merged

    def _merge_external_config_dict(self):
        self.external_config_dict = {}
        for part in (self.file_config_dict, self.variable_config_dict, self.cmd_config_dict):
            layer(self.external_config_dict, part)

    def _update_internal_config_dict(self, file):
        config_dict = load_yaml(file, self.yaml_loader)
        layer(self.internal_config_dict, config_dict)
        return config_dict

    def _get_final_config_dict(self):
        check_external(self.internal_config_dict, self.external_config_dict, self._sources, registry.PROPERTIES_DIR)
        final = layer(dict(self.internal_config_dict), self.external_config_dict)
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
        # a converter's file beside the data: above the plugin's, below the user's files
        beside = registry.data_properties_file(self.external_config_dict.get("data_path")
                                               or self.internal_config_dict.get("data_path") or "dataset/", dataset)
        if beside:
            self._load_data_properties(beside)

    def _load_data_properties(self, path: str):
        """The plugin protocol that ``path`` names (``protocol: <name>``), then its own keys."""
        config_dict = load_yaml(path, self.yaml_loader) or {}
        if "protocol" in config_dict:
            name = config_dict.pop("protocol")
            protocol = registry.named_protocol_file(name)
            if protocol is None:
                raise ValueError(f"{path}: protocol {name!r}: expected one of the plugin's dataset protocols "
                                 f"({', '.join(registry.protocol_names())})")
            self._update_internal_config_dict(protocol)
        elif registry.is_protocol_copy(path):
            getLogger(__name__).warning("%s is an old converter's copy of a protocol, kept as it was converted; "
                                        "convert the folder again to follow the plugin's protocol", path)
        layer(self.internal_config_dict, config_dict)
