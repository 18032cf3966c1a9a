"""Semantic-ID tokenizers, run as a RecBole dataset preprocessing step.

Set ``tokenizer: VRQ`` (and ``vrq_*`` keys, defaults in ``properties/overall.yaml``) and a
multi-view dataset class fits the tokenizer on the training split right after RecBole splits
the data (:func:`apply_tokenizer`), caches it under ``<dataset folder>/.cache/`` keyed by the
config and the training data, and attaches to the dataset and every split:

* ``item_sid`` (item_num, levels + 1) LongTensor: each item's SID, the uniqueness level last;
  row 0 (padding) is -1;
* ``query_sid`` (query ids, levels) LongTensor or None: each query photo's predicted prefix;
* ``sid_tokenizer``: the fitted tokenizer (encodes further photos).
"""
from __future__ import annotations

import logging
import os

from recbole_onevision.tokenizer.inputs import gather
from recbole_onevision.tokenizer.params import TokenizerConfigError, VRQParams
from recbole_onevision.tokenizer.vrq import VRQTokenizer

logger = logging.getLogger(__name__)

TOKENIZERS = {"VRQ": VRQTokenizer}


def build_tokenizer(config):
    name = config["tokenizer"]
    if name not in TOKENIZERS:
        raise TokenizerConfigError(f"config tokenizer: unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[name](VRQParams.from_config(config))


def cache_dir(dataset) -> str | None:
    config = dataset.config
    if not config["vrq_cache"]:
        return None
    return config["vrq_cache_dir"] or os.path.join(dataset.dataset_path, ".cache")


def apply_tokenizer(dataset, splits: list, show_progress: bool | None = None):
    """Fit (or reload) the configured tokenizer on ``splits[0]`` and attach SIDs everywhere."""
    config = dataset.config
    tokenizer = build_tokenizer(config)
    inputs = gather(dataset, splits, config)
    progress = config["show_progress"] if show_progress is None else show_progress
    tokenizer.fit_or_load(inputs, cache_dir(dataset), progress)
    query_sid = None
    if inputs.query_embedding is not None and tokenizer.visual_width:
        query_sid = tokenizer.encode_queries(dataset.query_embedding)
        query_sid[0] = -1  # no photo
    for target in (dataset, *splits):
        target.item_sid, target.query_sid, target.sid_tokenizer = tokenizer.item_sid, query_sid, tokenizer
    return tokenizer, inputs
