"""VRQ's settings (``vrq_*`` keys), resolved once from the config and checked in one place."""
from __future__ import annotations

import dataclasses


class TokenizerConfigError(ValueError):
    """A ``vrq_*`` config value is out of range; the message names the key."""


def _check(config, key, kind, low=None, allow_none=False):
    value = config[key]
    if value is None and allow_none:
        return None
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok or (low is not None and value < low):
        expected = {int: "an integer", float: "a number", bool: "True or False"}[kind]
        bound = f" >= {low}" if low is not None else ""
        raise TokenizerConfigError(f"config {key}: expected {expected}{bound}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class VRQParams:
    levels: int
    codebook_sizes: tuple[int, ...] | None  # None = auto from the catalogue size
    dim: int
    hidden: int
    align: bool
    align_steps: int
    batch_size: int
    lr: float
    temperature: float
    infonce_weight: float
    circle_weight: float
    circle_margin: float
    circle_gamma: float
    attribute_weight: float
    attribute_decay: float
    query_share: float
    collaborative: bool
    last_codes: int | None  # 0 = a counter; None = auto (4 x the level before's codes)
    code_steps: int
    kmeans_iters: int
    kmeans_sample: int | None
    seed: int
    # read by inputs.gather; here so they enter the cache key
    attribute_fields: tuple[str, ...] | None
    category_field: str
    price_buckets: int

    @classmethod
    def from_config(cls, config) -> "VRQParams":
        levels = _check(config, "vrq_levels", int, 1)
        sizes = config["vrq_codebook_sizes"]
        if sizes == "auto" or sizes is None:
            sizes = None
        else:
            sizes = [sizes] * levels if isinstance(sizes, int) and not isinstance(sizes, bool) else sizes
            if (not isinstance(sizes, (list, tuple)) or len(sizes) != levels
                    or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 2 for s in sizes)):
                raise TokenizerConfigError(f"config vrq_codebook_sizes: expected 'auto', an integer >= 2 or "
                                           f"a list of {levels} integers >= 2 (one per level), got "
                                           f"{config['vrq_codebook_sizes']!r}")
            sizes = tuple(sizes)
        for key in ("vrq_temperature", "vrq_lr", "vrq_circle_gamma"):
            if _check(config, key, float, 0) == 0:
                raise TokenizerConfigError(f"config {key}: expected a number > 0, got 0")
        share = _check(config, "vrq_query_share", float, 0)
        decay = _check(config, "vrq_attribute_decay", float, 0)
        if share > 1 or decay > 1:
            raise TokenizerConfigError("config vrq_query_share and vrq_attribute_decay: expected a number "
                                       f"in [0, 1], got {share!r} and {decay!r}")
        fields = config["vrq_attribute_fields"]
        if fields is not None and (not isinstance(fields, (list, tuple))
                                   or not all(isinstance(f, str) for f in fields)):
            raise TokenizerConfigError(f"config vrq_attribute_fields: expected a list of item field names, "
                                       f"got {fields!r}")
        seed = config["vrq_seed"] if config["vrq_seed"] is not None else config["seed"]
        return cls(
            levels=levels, codebook_sizes=sizes,
            dim=_check(config, "vrq_dim", int, 2), hidden=_check(config, "vrq_hidden", int, 1),
            align=_check(config, "vrq_align", bool), align_steps=_check(config, "vrq_align_steps", int, 1),
            batch_size=_check(config, "vrq_batch_size", int, 2), lr=float(config["vrq_lr"]),
            temperature=float(config["vrq_temperature"]),
            infonce_weight=_check(config, "vrq_infonce_weight", float, 0),
            circle_weight=_check(config, "vrq_circle_weight", float, 0),
            circle_margin=_check(config, "vrq_circle_margin", float, 0),
            circle_gamma=float(config["vrq_circle_gamma"]),
            attribute_weight=_check(config, "vrq_attribute_weight", float, 0), attribute_decay=decay,
            query_share=share, collaborative=_check(config, "vrq_collaborative", bool),
            last_codes=None if config["vrq_last_codes"] == "auto" else _check(config, "vrq_last_codes", int, 0),
            code_steps=_check(config, "vrq_code_steps", int, 0),
            kmeans_iters=_check(config, "vrq_kmeans_iters", int, 1),
            kmeans_sample=_check(config, "vrq_kmeans_sample", int, 1, allow_none=True),
            seed=int(seed), attribute_fields=None if fields is None else tuple(fields),
            category_field=str(config["vrq_category_field"]),
            price_buckets=_check(config, "vrq_price_buckets", int, 1),
        )
