"""Plugin dataset classes: ``<Model>Dataset`` here (or the one named by ``dataset_class``
in a config) is built instead of RecBole's default for that model type."""
from __future__ import annotations

import os
from logging import getLogger

import numpy as np
import torch
from recbole.data.dataset import Dataset, SequentialDataset
from recbole.utils import FeatureType

from recbole_onevision.data.multiview import MultiViewDataError, map_tokens, read_embedding_table
from recbole_onevision.data.price_levels import add_float_levels


def profile_fields(config, dataset) -> list[str]:
    """The user token fields a model reads as the profile: ``PROFILE_FIELDS``, or every loaded
    one (``~``); a field that is not a loaded user token field is refused."""
    fields = config["PROFILE_FIELDS"]
    if fields is None:
        user_feat = dataset.user_feat
        fields = [] if user_feat is None else [
            f for f in user_feat.columns if f != dataset.uid_field and dataset.field2type[f] == FeatureType.TOKEN]
    for field in fields:
        if dataset.field2type.get(field) != FeatureType.TOKEN:
            raise ValueError(f"config PROFILE_FIELDS: {field!r} is not a loaded user token field")
    return list(fields)


def item_token_fields(dataset) -> list[str]:
    """The item fields models read as attributes: token and token-sequence fields of ``.item``
    besides the item id."""
    if dataset.item_feat is None:
        return []
    return [f for f in dataset.item_feat.columns if f != dataset.iid_field
            and dataset.field2type[f] in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ)]


class MultiViewMixin:
    """Loads ``<name>.view`` and ``<name>.query`` (+ ``.npy``) beside RecBole's atomic files.

    After construction (all tensors indexed by RecBole's internal ids, row 0 = padding):

    * ``view_item`` (views,) and ``view_embedding`` (views, width): every catalogue view;
    * ``query_embedding`` (query ids, width): the photo of each query id of the interactions
      (field ``QUERY_ID_FIELD``, default ``query_id``), so a batch's query features are
      ``query_embedding[interaction[QUERY_ID_FIELD]]``;
    * ``query_product`` (query ids,): the pictured item, 0 where unknown.

    Either file may be absent (plain sequences such as Beauty): its attributes are then None.

    With ``tokenizer`` set in the config, :meth:`build` fits it on the training split and
    attaches ``item_sid``/``query_sid``/``sid_tokenizer`` (see :mod:`recbole_onevision.tokenizer`).
    """

    def __init__(self, config):
        super().__init__(config)
        self._load_multiview()

    def _data_processing(self):
        super()._data_processing()
        self.derived_item_fields = add_float_levels(self, self.config["item_float_levels"])

    def build(self):
        splits = super().build()
        self.item_sid = self.query_sid = self.sid_tokenizer = None
        if self.config["tokenizer"]:
            from recbole_onevision.tokenizer import apply_tokenizer

            apply_tokenizer(self, splits)
        return splits

    def _load_multiview(self):
        logger = getLogger()
        base = os.path.join(self.dataset_path, self.dataset_name)
        item2id = self.field2token_id[self.iid_field]
        self.view_item = self.view_embedding = self.query_embedding = self.query_product = self.view_ids = None
        width = None
        if os.path.isfile(f"{base}.view"):
            views = read_embedding_table(f"{base}.view", "view_id", "item_id")
            self.view_ids = list(views.ids)  # the .view file's ids, row for row (search shows their images)
            self.view_item = torch.from_numpy(map_tokens(views, "item", item2id))
            self.view_embedding = torch.from_numpy(views.matrix)
            width = views.matrix.shape[1]
            without = self.item_num - 1 - len(torch.unique(self.view_item))
            logger.info(f"{base}.view: {len(views.ids)} views of {width}-d; {without} items have none")

        query_field = self.config["QUERY_ID_FIELD"] or "query_id"
        if not os.path.isfile(f"{base}.query"):
            return
        if query_field not in self.field2token_id:
            raise MultiViewDataError(f"{base}.query exists, but the interactions have no token field "
                                     f"{query_field!r} (add it to load_col: inter)")
        queries = read_embedding_table(f"{base}.query", "query_id", "product_id", width, ref_required=False)
        query2id = self.field2token_id[query_field]
        listed = set(queries.ids)
        orphan = next((row for row, q in enumerate(queries.ids) if q not in query2id), None)
        if orphan is not None:
            raise MultiViewDataError(f"{queries.path}, line {orphan + 2}: query {queries.ids[orphan]!r} "
                                     "has no interaction (or all of them were filtered out)")
        missing = next((q for q in self.field2id_token[query_field][1:] if q not in listed), None)
        if missing is not None:
            raise MultiViewDataError(f"{base}.inter: query {missing!r} is not in {queries.path}")
        rows = np.array([query2id[q] for q in queries.ids])
        embedding = np.zeros((len(query2id), queries.matrix.shape[1]), dtype=np.float32)
        embedding[rows] = queries.matrix
        product = np.zeros(len(query2id), dtype=np.int64)
        product[rows] = map_tokens(queries, "product", item2id, allow_empty=True)
        self.query_embedding = torch.from_numpy(embedding)
        self.query_product = torch.from_numpy(product)
        logger.info(f"{queries.path}: {len(rows)} query photos of {embedding.shape[1]}-d, "
                    f"{int((product[rows] > 0).sum())} with a known product")


class MultiViewDataset(MultiViewMixin, Dataset):
    """RecBole ``Dataset`` (general and context models) with query photos and catalogue views."""


class MultiViewSequentialDataset(MultiViewMixin, SequentialDataset):
    """RecBole ``SequentialDataset`` with query photos and catalogue views.

    RecBole makes a row for every interaction but each user's first (it has no history to
    predict from). A search starts from a photo, so with ``empty_history_rows: True`` the first
    interaction becomes a row too, with an empty history (item list ``[0]``, the padding item,
    length 1): one-off sessions such as ETH-80's anonymous query photos then train and evaluate.
    Other rows' histories are as RecBole makes them.
    """

    def data_augmentation(self):
        if not self.config["empty_history_rows"]:
            return super().data_augmentation()
        self._prepend_padding_interactions()
        super().data_augmentation()
        self._drop_padding_from_histories()

    def _drop_padding_from_histories(self):
        """Histories that start with the padding interaction lose it (shifted left, one shorter)."""
        lists = [f for f in self.inter_feat.interaction if f.endswith(self.config["LIST_SUFFIX"])]
        length = self.inter_feat[self.item_list_length_field]
        padded = (self.inter_feat[self.item_id_list_field][:, 0] == 0) & (length > 1)
        for field in lists:
            values = self.inter_feat[field]
            shifted = values[padded].roll(-1, dims=1)
            shifted[:, -1] = 0
            values[padded] = shifted
        length[padded] -= 1

    def _prepend_padding_interactions(self):
        """One padding interaction (item 0, before the user's first) per user: RecBole's
        augmentation then predicts the first real interaction from it, and drops it as a target."""
        from recbole.data.interaction import Interaction, cat_interactions

        self._check_field("uid_field", "time_field")
        users, inverse = np.unique(self.inter_feat[self.uid_field].numpy(), return_inverse=True)
        time = self.inter_feat[self.time_field]
        first = torch.zeros(len(users), dtype=time.dtype).scatter_reduce(
            0, torch.from_numpy(inverse.reshape(-1)), time, "amin", include_self=False)
        padding = {field: torch.zeros((len(users),) + values.shape[1:], dtype=values.dtype)
                   for field, values in self.inter_feat.interaction.items()}
        padding[self.uid_field] = torch.from_numpy(users)
        padding[self.time_field] = first - 1  # RecBole sorts by user, then time
        self.inter_feat = cat_interactions([Interaction(padding), self.inter_feat])
