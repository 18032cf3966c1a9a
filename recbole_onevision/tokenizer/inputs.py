"""What a tokenizer may learn from: catalogue views, item attributes, *training* queries and
interactions, gathered from a built RecBole dataset and its splits.

Only the training split's interactions (targets and, for sequential datasets, the histories
of training rows) and their query photos go in; valid/test queries are kept apart as the
held-out set the inspection measures on. General and sequential datasets with the same split
give the same inputs, so their SIDs (and cache keys) agree.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import torch
from recbole.utils import FeatureType


@dataclasses.dataclass
class AttributeField:
    """One item attribute as a token matrix: ``tokens[item]`` lists its token ids (0 = none)."""
    name: str
    tokens: np.ndarray  # (item_num, width) int64
    vocab: int  # number of token ids, including 0
    weight: float


@dataclasses.dataclass
class TokenizerInputs:
    item_num: int  # RecBole's, row 0 = padding
    item_tokens: np.ndarray  # external item ids, row 0 = '[PAD]'
    view_item: np.ndarray | None  # (views,) internal item ids
    view_embedding: np.ndarray | None  # (views, width) float32
    query_embedding: np.ndarray | None  # (query ids, width), row 0 = no photo
    query_product: np.ndarray | None  # (query ids,) pictured item, 0 = unknown
    train_queries: np.ndarray  # query ids of training interactions with a known product
    heldout_queries: np.ndarray  # query ids of valid/test targets with a known product
    attributes: list[AttributeField]
    train_users: np.ndarray  # training (user, item) pairs, deduplicated
    train_items: np.ndarray
    user_num: int

    @property
    def has_views(self) -> bool:
        return self.view_embedding is not None

    def digest(self, collaborative: bool) -> str:
        """Hash of everything a fit reads (never the held-out queries)."""
        h = hashlib.sha256()

        def add(*arrays):
            for a in arrays:
                a = np.ascontiguousarray(a)
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(a.tobytes())

        add(np.array("\x1f".join(map(str, self.item_tokens))))
        if self.has_views:
            add(self.view_item, self.view_embedding)
        if self.query_embedding is not None:
            add(self.query_embedding[self.train_queries], self.query_product[self.train_queries])
        for field in self.attributes:
            add(np.array(field.name), field.tokens)
        if collaborative:
            add(self.train_users, self.train_items)
        return h.hexdigest()


def _split_interactions(dataset, field: str) -> np.ndarray:
    """Values of ``field`` over a split's rows, plus the histories of sequential rows."""
    feat = dataset.inter_feat
    values = [feat[field].numpy()]
    list_field = field + dataset.config["LIST_SUFFIX"]
    if list_field in feat:
        lists = feat[list_field].numpy()
        lengths = feat[dataset.config["ITEM_LIST_LENGTH_FIELD"]].numpy()
        mask = np.arange(lists.shape[1])[None, :] < lengths[:, None]
        values.append(lists[mask])
    return np.concatenate(values)


def _training_pairs(train) -> tuple[np.ndarray, np.ndarray]:
    uid, iid = train.uid_field, train.iid_field
    items = _split_interactions(train, iid)
    feat = train.inter_feat
    users = [feat[uid].numpy()]
    list_field = iid + train.config["LIST_SUFFIX"]
    if list_field in feat:
        lengths = feat[train.config["ITEM_LIST_LENGTH_FIELD"]].numpy()
        users.append(np.repeat(feat[uid].numpy(), lengths))
    pairs = np.unique(np.stack([np.concatenate(users), items], 1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _attribute_fields(dataset, config) -> list[AttributeField]:
    """Item attributes, category path first (one field per level), weights decaying by rank."""
    if dataset.item_feat is None:
        return []
    wanted = config["vrq_attribute_fields"]
    category = config["vrq_category_field"]
    derived = getattr(dataset, "derived_item_fields", [])  # e.g. price_level: VRQ buckets price itself
    available = [f for f in dataset.item_feat.columns if f != dataset.iid_field and f not in derived]
    if wanted is None:
        wanted = sorted(available, key=lambda f: f != category)
    for name in wanted:
        if name not in available:
            raise ValueError(f"vrq_attribute_fields: item field {name!r} is not loaded "
                             f"(loaded item fields: {available}; add it to load_col: item)")
    decay = config["vrq_attribute_decay"]
    fields: list[AttributeField] = []
    for name in wanted:
        kind = dataset.field2type[name]
        column = dataset.item_feat[name].numpy()
        if kind == FeatureType.TOKEN:
            parts = [(name, column[:, None].astype(np.int64), dataset.num(name))]
        elif kind == FeatureType.TOKEN_SEQ and name == category:  # a path: one field per level
            parts = [(f"{name}[{level}]", column[:, level:level + 1].astype(np.int64), dataset.num(name))
                     for level in range(column.shape[1])]
        elif kind == FeatureType.TOKEN_SEQ:  # a bag of tokens
            parts = [(name, column.astype(np.int64), dataset.num(name))]
        elif kind == FeatureType.FLOAT:
            parts = [(name, _buckets(column, config["vrq_price_buckets"]), config["vrq_price_buckets"] + 1)]
        else:
            raise ValueError(f"vrq_attribute_fields: item field {name!r} has type {kind.value}; "
                             "the tokenizer reads token, token_seq and float fields")
        for part_name, tokens, vocab in parts:
            fields.append(AttributeField(part_name, tokens, vocab, decay ** len(fields)))
    return fields


def _buckets(values: np.ndarray, n: int) -> np.ndarray:
    """Quantile buckets 1..n of a float attribute (log scale for positive values); 0 = missing."""
    values = values.astype(np.float64)
    out = np.zeros((len(values), 1), dtype=np.int64)
    known = np.isfinite(values)
    known[0] = False  # padding row
    if not known.any():
        return out
    x = values[known]
    x = np.log1p(x - x.min())
    edges = np.quantile(x, np.linspace(0, 1, n + 1)[1:-1])
    out[known, 0] = 1 + np.searchsorted(edges, x, side="right")
    return out


def gather(dataset, splits: list, config) -> TokenizerInputs:
    """Inputs for a tokenizer from ``dataset`` (a MultiView dataset) and its built splits."""
    train, *evaluation = splits
    users, items = _training_pairs(train)
    query_field = config["QUERY_ID_FIELD"] or "query_id"
    query_embedding = getattr(dataset, "query_embedding", None)
    query_product = getattr(dataset, "query_product", None)
    train_q = heldout_q = np.zeros(0, dtype=np.int64)
    if query_embedding is not None:
        product = query_product.numpy()
        train_q = np.unique(_split_interactions(train, query_field))
        train_q = train_q[product[train_q] > 0]
        heldout_q = np.unique(np.concatenate([d.inter_feat[query_field].numpy() for d in evaluation]))
        heldout_q = np.setdiff1d(heldout_q[product[heldout_q] > 0], train_q)
    view_embedding = getattr(dataset, "view_embedding", None)
    as_numpy = lambda t: None if t is None else (t.numpy() if isinstance(t, torch.Tensor) else t)  # noqa: E731
    return TokenizerInputs(
        item_num=dataset.item_num,
        item_tokens=np.asarray(dataset.field2id_token[dataset.iid_field]),
        view_item=as_numpy(getattr(dataset, "view_item", None)),
        view_embedding=as_numpy(view_embedding),
        query_embedding=as_numpy(query_embedding),
        query_product=as_numpy(query_product),
        train_queries=train_q,
        heldout_queries=heldout_q,
        attributes=_attribute_fields(dataset, config),
        train_users=users,
        train_items=items,
        user_num=dataset.user_num,
    )
