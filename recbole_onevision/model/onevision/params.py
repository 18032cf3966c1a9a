"""OneVision's settings, resolved once from the config and the dataset, checked in one place.

Nothing here depends silently on the data: the only facts taken from the dataset are whether
it has query photos and catalogue views (without them the photo parts are off) and item token
fields (without them ``item_attributes`` is off), and the run's log says so. Dataset-specific recipes live in properties files (the photo-less one in
``properties/dataset/amazon-s3rec.yaml`` and the top-level ``properties/photo-less.yaml``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from recbole_onevision.data.dataset import item_token_fields, profile_fields
from recbole_onevision.trainer import stage_plan

RANKINGS = ("beams", "dense", "fused")
READOUTS = ("decoder", "history", "both")


@dataclass(frozen=True)
class Pruning:
    """Dynamic pruning at inference (``prune``)."""
    beam_margin: float  # beams this far (log-probability) behind their row's best are dropped
    prefix_levels: int  # older history items are kept only when this many SID codes match the photo's
    keep_recent: int  # most recent history items always kept
    min_beams: int = 1  # beams never dropped: the largest topk, so a pruned search still fills its list


@dataclass(frozen=True)
class OneVisionParams:
    d_model: int
    n_heads: int
    layers: int
    ffn_size: int
    dropout: float
    encoder_dropout: float
    visual_tokens: int  # 0 when the data has no query photos
    visual_bias: float  # 0 when off or without photos and views
    history_item_embedding: bool
    item_attributes: bool
    item_float_levels: int  # float item fields read as levels among the attributes (0: none)
    node_outputs: bool
    photo_noise: float  # 0 without photos
    dense_weight: float
    dense_readout: str
    dense_temperature: float | None
    ranking: str
    beam_size: int
    sid_weight: float
    visual_prior_weight: float
    pictured_weight: float  # in [0, 1]
    order_weight: float
    dpo_beta: float | None  # None when no dpo stage runs
    dpo_sft_weight: float | None
    prune: Pruning
    prune_enabled: bool
    profile_fields: tuple[str, ...]
    stages: tuple[str, ...]  # the stages that will run

    @property
    def photos(self) -> bool:
        return self.visual_tokens > 0

    def table(self) -> str:
        """What will actually run, for the log at the start of a run."""
        inputs = (["photo" if self.photos else "no photo"] + (["profile"] if self.profile_fields else [])
                  + ["history SIDs"] + (["item embeddings"] if self.history_item_embedding else []))
        rows = [("ranking", self.ranking + (f" (beam_size {self.beam_size})" if self.ranking != "dense" else "")),
                ("stages", ", ".join(self.stages)),
                ("inputs", ", ".join(inputs)),
                ("visual bias", f"scale {self.visual_bias:g}" if self.visual_bias else "off"),
                ("item attributes", ("history items and output codes" + (
                    f", float fields in {self.item_float_levels} levels" if self.item_float_levels else ""))
                 if self.item_attributes else "off"),
                ("node outputs", ("a vector per trie node" + (", read with the photo" if self.photos else ""))
                 if self.node_outputs else "off"),
                ("photo noise", f"{self.photo_noise:g}" if self.photo_noise else "off"),
                ("dense head", f"weight {self.dense_weight:g}, readout {self.dense_readout}, temperature "
                               f"{self.dense_temperature}" if self.dense_weight else "off"),
                ("size", f"d_model {self.d_model}, {self.n_heads} heads, {self.layers}+{self.layers} layers, "
                         f"ffn {self.ffn_size}, dropout {self.dropout:g} (encoder {self.encoder_dropout:g})"),
                ("pruning", str(self.prune) if self.prune_enabled else "off")]
        width = max(len(k) for k, _ in rows)
        return "OneVision settings:\n" + "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)

    def trained_settings(self) -> dict:
        """What a checkpoint's weights mean: saved with them and compared on loading (what only
        changes inference, such as ranking, beam_size or pruning, may differ)."""
        keys = ("d_model", "n_heads", "layers", "ffn_size", "visual_tokens", "history_item_embedding", "item_attributes",
                "item_float_levels", "node_outputs", "dense_readout", "dense_temperature")
        out = {k: v for k, v in asdict(self).items() if k in keys}
        out.update(visual_bias=self.visual_bias > 0, dense_head=self.dense_weight > 0,
                   profile_fields=list(self.profile_fields))
        # recorded only when on: older checkpoints still load
        for key in ("item_attributes", "item_float_levels", "node_outputs"):
            if not out[key]:
                del out[key]
        if not self.dense_weight:  # an untrained head's settings mean nothing
            out.update(dense_readout=None, dense_temperature=None)
        return out

    @classmethod
    def from_config(cls, config, dataset=None) -> OneVisionParams:
        """The settings for ``dataset``; without one (checking a config before any data is read)
        as if it had photos, views and no profile fields."""
        photos = dataset is None or getattr(dataset, "query_embedding", None) is not None
        views = dataset is None or getattr(dataset, "view_embedding", None) is not None
        d_model, n_heads = _int(config, "d_model", 1), _int(config, "n_heads", 1)
        if d_model % n_heads:
            raise ValueError(f"config d_model: expected a multiple of n_heads ({n_heads}), got {d_model}")
        visual_tokens = _int(config, "visual_tokens", 0) if photos else 0
        dense = _mapping(config, "dense_head", {"weight", "readout", "temperature"})
        losses = _mapping(config, "loss_weights", {"sid", "visual_prior", "pictured", "order"})
        prune = _mapping(config, "prune", {"enabled", "beam_margin", "prefix_levels", "keep_recent"})
        plan = {stage.name: stage for stage in stage_plan(config)}
        dpo = plan["dpo"].settings if "dpo" in plan else None
        runs = tuple(s for s in plan if s != "pretrain" or visual_tokens)
        item_attributes = _bool(config["item_attributes"], "item_attributes") and (
            dataset is None or bool(item_token_fields(dataset)))
        params = cls(
            d_model=d_model, n_heads=n_heads, layers=_int(config, "layers", 1), ffn_size=_int(config, "ffn_size", 1),
            dropout=_unit(config["dropout"], "dropout"),
            encoder_dropout=_unit(config["encoder_dropout"], "encoder_dropout"),
            visual_tokens=visual_tokens,
            visual_bias=_number(config["visual_bias"], "visual_bias", 0) if visual_tokens and views else 0.0,
            history_item_embedding=_bool(config["history_item_embedding"], "history_item_embedding"),
            item_attributes=item_attributes,
            item_float_levels=config["item_float_levels"] if item_attributes and (
                dataset is None or getattr(dataset, "derived_item_fields", None)) else 0,
            node_outputs=_bool(config["node_outputs"], "node_outputs"),
            photo_noise=_number(config["photo_noise"], "photo_noise", 0) if visual_tokens else 0.0,
            dense_weight=_number(dense.get("weight"), "dense_head weight", 0),
            dense_readout=_choice(dense.get("readout"), "dense_head readout", READOUTS),
            dense_temperature=_temperature(dense.get("temperature")),
            ranking=_choice(config["ranking"], "ranking", RANKINGS),
            beam_size=_beam_size(config),
            sid_weight=_number(losses.get("sid"), "loss_weights sid", 0),
            visual_prior_weight=_number(losses.get("visual_prior"), "loss_weights visual_prior", 0),
            pictured_weight=_share(losses.get("pictured"), "loss_weights pictured"),
            order_weight=_number(losses.get("order"), "loss_weights order", 0),
            dpo_beta=None if dpo is None else _number(dpo.get("beta"), "stages dpo beta", 0),
            dpo_sft_weight=None if dpo is None else _number(dpo.get("sft_weight"), "stages dpo sft_weight", 0),
            prune=Pruning(beam_margin=math.inf if prune.get("beam_margin") is None
                          else _number(prune["beam_margin"], "prune beam_margin", 0),
                          prefix_levels=int(_number(prune.get("prefix_levels") or 0, "prune prefix_levels", 0)),
                          keep_recent=int(_number(prune.get("keep_recent") or 0, "prune keep_recent", 0)),
                          min_beams=max(config["topk"] or [1])),
            prune_enabled=_bool(prune.get("enabled"), "prune enabled"),
            profile_fields=() if dataset is None else tuple(profile_fields(config, dataset)), stages=runs)
        params.check()
        return params

    def check(self) -> None:
        """Cross-key checks: what one setting needs of another."""
        if self.dense_weight and not self.history_item_embedding:
            raise ValueError("config dense_head: weight > 0 needs history_item_embedding: True (the dense head "
                             "scores its vectors)")
        if self.ranking != "beams" and not self.dense_weight:
            raise ValueError(f"config ranking: {self.ranking} needs a trained dense head (dense_head weight > 0)")
        if not self.sid_weight and self.ranking != "dense":
            raise ValueError("config loss_weights: sid 0 leaves the decoder untrained, so it needs ranking: dense "
                             "and dense_head weight > 0")
        if not self.sid_weight and "dpo" in self.stages:
            raise ValueError("config loss_weights: sid 0 cannot run the dpo stage (its preference is over SID "
                             "likelihoods); set `--stages=[sft]`")


def _int(config, key: str, least: int) -> int:
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"config {key}: expected an integer >= {least}, got {value!r}")
    return value


def _number(value, key: str, least: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not number >= least:
        raise ValueError(f"config {key}: expected a value >= {least:g}, got {value!r}")
    return number


def _share(value, key: str) -> float:
    number = _number(value, key, 0)
    if not number <= 1:
        raise ValueError(f"config {key}: expected a value in [0, 1], got {value!r}")
    return number


def _unit(value, key: str) -> float:
    number = _number(value, key, 0)
    if not number < 1:
        raise ValueError(f"config {key}: expected a value in [0, 1), got {value!r}")
    return number


def _beam_size(config) -> int:
    largest = max(config["topk"] or [1])
    value = config["beam_size"]
    if not isinstance(value, int) or isinstance(value, bool) or value < max(largest, 1):
        raise ValueError(f"config beam_size: expected at least the largest topk ({largest}), got {value!r}")
    return value


def _bool(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"config {key}: expected True or False, got {value!r}")
    return value


def _choice(value, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"config {key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _temperature(value) -> float | None:
    if value is None:
        return None
    try:
        number = math.nan if isinstance(value, (bool, str)) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0 < number < math.inf:
        raise ValueError(f"config dense_head temperature: expected ~ (dot products) or a value > 0, got {value!r}")
    return number


def _mapping(config, key: str, known: set[str]) -> dict:
    value = config[key]
    if not isinstance(value, dict):
        raise ValueError(f"config {key}: expected a mapping with keys {sorted(known)}, got {value!r}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"config {key}: unknown keys {unknown}; expected some of {sorted(known)}")
    return value
