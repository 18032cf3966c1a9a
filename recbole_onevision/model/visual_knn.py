"""VisualKNN: the recall stage of the vision-search cascade, alone.

Items are ranked by their best catalogue view's cosine similarity to the query photo (raw
embeddings, or the VRQ-aligned ones with ``visual_features: aligned``). Nothing is learnt; it
trains for one epoch of a zero loss only so that RecBole's trainer saves and reloads it like
any model. Interactions without a photo get a flat score row.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn


def best_view_similarity(photos: torch.Tensor, views: torch.Tensor, view_item: torch.Tensor,
                         n_items: int, exclude_views: torch.Tensor | None = None) -> torch.Tensor:
    """(photos, n_items) cosine of each photo to each item's best catalogue view (rows
    L2-normalised beforehand); -inf for items without views. ``exclude_views`` (photos,): a
    view each row may not match (when the "photos" are catalogue views themselves)."""
    similarity = photos @ views.T
    if exclude_views is not None:
        similarity.scatter_(1, exclude_views.unsqueeze(1), float("-inf"))
    scores = torch.full((len(photos), n_items), float("-inf"), device=similarity.device)
    return scores.scatter_reduce_(1, view_item.expand(len(photos), -1), similarity, "amax")


def photos_and_views(dataset, model: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's query photos and catalogue views, or an error naming ``model`` and the files."""
    photos, views = getattr(dataset, "query_embedding", None), getattr(dataset, "view_embedding", None)
    if photos is None or views is None:
        raise ValueError(f"{model} needs query photos and catalogue views (<name>.query and <name>.view "
                         "with their .npy) and `dataset_class: MultiViewSequentialDataset`")
    return photos, views


class VisualKNN(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        photos, views = photos_and_views(dataset, "VisualKNN")
        mode = config["visual_features"]
        if mode not in ("raw", "aligned"):
            raise ValueError(f"config visual_features: expected 'raw' or 'aligned', got {mode!r}")
        if mode == "aligned":
            tokenizer = getattr(dataset, "sid_tokenizer", None)
            if tokenizer is None or tokenizer.head is None:
                raise ValueError("visual_features: aligned needs `tokenizer: VRQ` with vrq_align: True")
            photos, views = tokenizer.visual(photos), tokenizer.visual(views)
        self.query_field = config["QUERY_ID_FIELD"] or "query_id"
        self.register_buffer("photos", F.normalize(photos.float(), dim=1), persistent=False)
        self.register_buffer("views", F.normalize(views.float(), dim=1), persistent=False)
        self.register_buffer("view_item", dataset.view_item.clone(), persistent=False)
        self.dummy = nn.Parameter(torch.zeros(1))

    def calculate_loss(self, interaction):
        return self.dummy.sum() * 0.0

    def full_sort_predict(self, interaction):
        query = interaction[self.query_field]
        scores = best_view_similarity(self.photos[query], self.views, self.view_item, self.n_items)
        scores[query == 0] = 0.0  # no photo: no preference
        return scores

    def predict(self, interaction):
        return self.full_sort_predict(interaction).gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)
