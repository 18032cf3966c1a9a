"""Float item fields (price) read as a token: where the item stands within its leaf category.

Models read an item's token fields (brand, category path) as attributes; a float such as price
is not one. What a shopper weighs between look-alikes is whether an item is cheap or dear *for
its kind*, so with ``item_float_levels: n`` each float field ``f`` of ``.item`` gets a token
field ``f_level``: the item's percentile among the items of its leaf category
(``leaf_category_field``), cut into ``n`` equal steps (1 = cheapest). The multi-view dataset
classes add it, so OneVision's item attributes and MCA's ranker read it; VRQ does not (it
buckets floats itself), so SIDs do not change.
"""
from __future__ import annotations

import numpy as np
from recbole.utils import FeatureSource, FeatureType


def add_float_levels(dataset, levels: int) -> list[str]:
    """Adds ``<field>_level`` to ``dataset.item_feat`` (a DataFrame with remapped ids, row = item
    id, row 0 = padding) for every float item field; returns the new fields."""
    if not isinstance(levels, int) or levels < 0:
        raise ValueError(f"config item_float_levels: expected an integer >= 0 (0 = off), got {levels!r}")
    feat = dataset.item_feat
    if not levels or feat is None:
        return []
    floats = [f for f in feat.columns if dataset.field2type[f] == FeatureType.FLOAT]
    if not floats:
        return []
    group_field = dataset.config["leaf_category_field"]
    if group_field not in feat.columns:
        raise ValueError(f"config item_float_levels: reads float item fields ({', '.join(floats)}) within "
                         f"their leaf category, the item field {group_field!r} (leaf_category_field), "
                         "which is not loaded (add it to load_col: item, or set item_float_levels: 0)")
    group = feat[group_field].map(lambda v: tuple(np.atleast_1d(v).tolist()))
    real = feat[dataset.iid_field].to_numpy() != 0
    added = []
    for field in floats:
        percentile = feat[field].where(real).groupby(group).rank(pct=True, method="average")
        level = np.ceil(percentile.fillna(0).to_numpy() * levels).clip(0, levels).astype(np.int64)
        name = f"{field}_level"
        feat[name] = np.where(real, np.maximum(level, 1), 0)
        dataset.field2type[name] = FeatureType.TOKEN
        dataset.field2source[name] = FeatureSource.ITEM
        dataset.field2id_token[name] = np.array(["[PAD]"] + [str(i) for i in range(1, levels + 1)])
        dataset.field2token_id[name] = {t: i for i, t in enumerate(dataset.field2id_token[name])}
        added.append(name)
    return added
