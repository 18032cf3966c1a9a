"""A trained run, loaded for search: its config, dataset, model and catalogue.

A checkpoint written by this plugin's trainers records the run's settings and data folder
(``config.overrides``, ``config.data_path``), so the config, the VRQ codes (from the dataset's
cache, or refitted the same way) and the model are rebuilt exactly as trained. Only torch's
safe loader reads the file. Nothing is written to the run's files.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from logging import getLogger

import numpy as np
import torch
from recbole.utils import init_seed

from recbole_onevision.compat import load_checkpoint, load_weights
from recbole_onevision.config import Config
from recbole_onevision.registry import create_dataset, data_preparation


class RunError(ValueError):
    """A checkpoint that cannot be searched with; the message names the file and why."""


@dataclass(frozen=True)
class Catalogue:
    """What search shows of each item, by RecBole's internal id (row 0: padding)."""
    tokens: np.ndarray  # internal id -> the dataset's item id
    categories: list[str]  # internal id -> category path ("a > b"), "" where none
    sids: torch.Tensor | None  # (items, levels) semantic IDs, None for a model without them
    item_images: list[list[str]]  # internal id -> its catalogue views' image ids
    images: dict[str, str]  # image id (view or query photo) -> absolute file path
    encoder: dict | None  # the encoder that made the dataset's embeddings (None: not recorded)


@dataclass(frozen=True)
class LoadedRun:
    checkpoint: str
    config: Config
    dataset: object  # the full dataset (RecBole's, after build: histories in its rows)
    model: torch.nn.Module
    catalogue: Catalogue
    splits: tuple  # RecBole's (train, valid, test) loaders, to evaluate the same run

    @property
    def name(self) -> str:
        return f"{self.config['model']} on {self.config['dataset']}"


def load_run(checkpoint: str, overrides: dict | None = None) -> LoadedRun:
    """Load ``checkpoint`` (a ``.pth`` this plugin's trainers wrote) with everything search
    needs; ``overrides`` change inference-only settings (e.g. ``beam_size``, ``prune``)."""
    if not os.path.isfile(checkpoint):
        raise RunError(f"checkpoint {checkpoint!r}: no such file")
    state = load_checkpoint(checkpoint, map_location="cpu")
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict) or "overrides" not in saved or "state_dict" not in state:
        raise RunError(f"checkpoint {checkpoint}: it records no run settings (written by an earlier version, or "
                       "not by this plugin's trainers); train it again with this version")
    settings = {**_trained_with(saved["model"], state["state_dict"]), **saved["overrides"],
                "data_path": saved["data_path"], "show_progress": False, "state": "WARNING", **(overrides or {})}
    config = Config(saved["model"], saved["dataset"], config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])  # the tokenizer refits seeded if its cache is gone
    dataset = create_dataset(config)
    splits = data_preparation(config, dataset)
    model = config.model_class(config, splits[0]._dataset).to(config["device"])
    load_weights(model, state, checkpoint, config["model"])
    model.eval()
    getLogger().info(f"search: loaded {config['model']} on {config['dataset']} from {checkpoint}")
    return LoadedRun(checkpoint, config, dataset, model, catalogue_of(config, dataset), splits)


def _trained_with(model: str, state_dict: dict) -> dict:
    """Settings whose default changed since the checkpoint was written, as it was trained (a
    OneVision from before ``item_attributes`` was on by default ran without them)."""
    if model != "OneVision":
        return {}
    from recbole_onevision.model.onevision.checkpoint import OFF_WHEN_ABSENT, recorded_settings

    recorded = recorded_settings(state_dict)
    return {key: recorded[key] for key in OFF_WHEN_ABSENT if key in recorded}


def catalogue_of(config, dataset) -> Catalogue:
    tokens = np.asarray(dataset.field2id_token[dataset.iid_field])
    categories = [""] * len(tokens)
    if dataset.item_feat is not None and "category" in dataset.item_feat.columns:
        names = dataset.field2id_token["category"]
        for item, row in enumerate(dataset.item_feat["category"].view(len(tokens), -1).tolist()):
            categories[item] = " > ".join(str(names[t]) for t in row if t)
    record = _photo_record(os.path.join(config["data_path"], f"{config['dataset']}.photos.json"))
    images = {key: os.path.join(record["root"], rel) for key, rel in record["images"].items()} if record else {}
    item_images: list[list[str]] = [[] for _ in tokens]
    view_ids = getattr(dataset, "view_ids", None)
    if view_ids is not None:
        for view, item in zip(view_ids, dataset.view_item.tolist()):
            if view in images:
                item_images[item].append(view)
    sid = getattr(dataset, "item_sid", None)
    return Catalogue(tokens, categories, sid, item_images, images, record["encoder"] if record else None)


def _photo_record(path: str) -> dict | None:
    """The converter's ``<name>.photos.json`` (None when the dataset has none, e.g. MVShop)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record.get("images"), dict) or not isinstance(record.get("encoder"), dict):
            raise ValueError("expected the keys 'encoder' and 'images'")
    except (ValueError, AttributeError) as err:
        raise RunError(f"{path}: not a photo record this converter wrote ({err}); convert the dataset again") from None
    return record
