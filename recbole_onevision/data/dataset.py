"""Plugin dataset classes: ``<Model>Dataset`` here (or the one named by ``dataset_class``
in a config) is built instead of RecBole's default for that model type."""
from __future__ import annotations

import os
from logging import getLogger

import numpy as np
import torch
from recbole.data.dataset import Dataset, SequentialDataset

from recbole_onevision.data.multiview import MultiViewDataError, map_tokens, read_embedding_table


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
        self.view_item = self.view_embedding = self.query_embedding = self.query_product = None
        width = None
        if os.path.isfile(f"{base}.view"):
            views = read_embedding_table(f"{base}.view", "view_id", "item_id")
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
    """RecBole ``SequentialDataset`` with query photos and catalogue views."""
