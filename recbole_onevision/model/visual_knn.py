"""VisualKNN: the recall stage of the vision-search cascade, alone.

Items are ranked by their best catalogue view's cosine similarity to the query photo (raw
embeddings, or the VRQ-aligned ones with ``visual_features: aligned``), by exact search, or with
``recall_index: hnsw | ivf`` through a faiss index that retrieves ``recall_size`` items per photo
(the rest score -inf; :mod:`recbole_onevision.model.ann_recall`). Nothing is learnt; it
trains for one epoch of a zero loss only so that RecBole's trainer saves and reloads it like
any model. Interactions without a photo get a flat score row.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_onevision.model.ann_recall import view_index
from recbole_onevision.model.visual_similarity import ViewTable


def photos_and_views(dataset, model: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's query photos and catalogue views, or an error naming ``model`` and the files."""
    photos, views = getattr(dataset, "query_embedding", None), getattr(dataset, "view_embedding", None)
    if photos is None or views is None:
        raise ValueError(f"{model} needs query photos and catalogue views (<name>.query and <name>.view "
                         "with their .npy) and `dataset_class: MultiViewSequentialDataset`")
    return photos, views


def check_recall_size(config, size: int, n_items: int) -> None:
    """``recall_size``: fewer than the items (id 0 is padding), at least the largest topk."""
    if not 1 <= size < n_items:
        raise ValueError(f"config recall_size: expected 1..{n_items - 1} (items), got {size}")
    largest_k = max(config["topk"]) if config["topk"] else 0
    if size < largest_k:
        raise ValueError(f"config recall_size: expected at least the largest topk ({largest_k}), got {size}")


class VisualKNN(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        photos, views = photos_and_views(dataset, "VisualKNN")
        mode = config["visual_features"]
        if mode not in ("raw", "aligned"):
            raise ValueError(f"config visual_features: expected 'raw' or 'aligned', got {mode!r}")
        self.tokenizer = None
        if mode == "aligned":
            self.tokenizer = getattr(dataset, "sid_tokenizer", None)
            if self.tokenizer is None or self.tokenizer.head is None:
                raise ValueError("visual_features: aligned needs `tokenizer: VRQ` with vrq_align: True")
            views = self.tokenizer.visual(views)
        self.query_field = config["QUERY_ID_FIELD"] or "query_id"
        self.use_query_photos(photos)
        unit = F.normalize(views.float(), dim=1)
        self.views = ViewTable(unit, dataset.view_item, self.n_items)
        self.recall_index = view_index(config, dataset, unit, self.n_items)  # None: exact search
        self.recall_size = int(config["recall_size"])
        if self.recall_index is not None:
            check_recall_size(config, self.recall_size, self.n_items)
        self.dummy = nn.Parameter(torch.zeros(1))

    def use_query_photos(self, photos: torch.Tensor) -> None:
        """The photo embeddings query ids index from now on (row 0: no photo); the dataset's at
        construction, a search's own photos in :mod:`recbole_onevision.search`."""
        if self.tokenizer is not None:
            photos = self.tokenizer.visual(photos)
        device = self.photos.device if hasattr(self, "photos") else photos.device  # stays where the model is
        self.register_buffer("photos", F.normalize(photos.float(), dim=1).to(device), persistent=False)

    def calculate_loss(self, interaction):
        return self.dummy.sum() * 0.0

    def full_sort_predict(self, interaction):
        query = interaction[self.query_field]
        photos = self.photos[query]
        scores = self.views(photos) if self.recall_index is None else self.recall_index(photos, self.recall_size)
        scores[query == 0] = 0.0  # no photo: no preference
        return scores

    def predict(self, interaction):
        return self.full_sort_predict(interaction).gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)
