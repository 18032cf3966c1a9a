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


class ViewTable(nn.Module):
    """The catalogue's views laid out item by item, for repeated best-view searches.

    Each item gets the same number of slots (its most views); an item with fewer views repeats
    its own, which leaves its best cosine unchanged. An item's best view is then a dense max over
    its slots instead of a scatter over all views (about 2x faster on MVShop's 150k views; a
    training batch of OneVision does this search for every row). When padding would more than
    double the views (a few items with very many), the scatter of :func:`best_view_similarity`
    is used instead. Rows of ``views`` must be L2-normalised.
    """

    def __init__(self, views: torch.Tensor, view_item: torch.Tensor, n_items: int):
        super().__init__()
        self.n_items = n_items
        counts = torch.bincount(view_item, minlength=n_items)
        slots = max(int(counts.max()), 1)
        self.dense = n_items * slots <= 2 * len(view_item)
        self.register_buffer("view_item", view_item.clone(), persistent=False)
        self.register_buffer("missing", counts == 0, persistent=False)  # items without views
        if self.dense:
            order = torch.argsort(view_item, stable=True)
            start = counts.cumsum(0) - counts
            slot = start.unsqueeze(1) + torch.arange(slots) % counts.clamp_min(1).unsqueeze(1)
            slot_view = order[slot.clamp_max(len(order) - 1)]  # items without views: masked later
            self.register_buffer("slot_view", slot_view, persistent=False)
            self.register_buffer("slot_unit", views[slot_view.view(-1)], persistent=False)
        else:
            self.register_buffer("views", views, persistent=False)

    def forward(self, photos: torch.Tensor, exclude_views: torch.Tensor | None = None) -> torch.Tensor:
        """As :func:`best_view_similarity`: (photos, n_items) best cosines, -inf for items
        without views (or whose only views are excluded)."""
        if not self.dense:
            return best_view_similarity(photos, self.views, self.view_item, self.n_items, exclude_views)
        rows = len(photos)
        similarity = (photos @ self.slot_unit.T).view(rows, self.n_items, -1)
        if exclude_views is not None:
            item, row = self.view_item[exclude_views], torch.arange(rows, device=photos.device)
            own = self.slot_view[item] == exclude_views.unsqueeze(1)  # every slot repeating that view
            similarity[row, item] = similarity[row, item].masked_fill(own, float("-inf"))
        return similarity.amax(2).masked_fill_(self.missing, float("-inf"))

    def of_items(self, photos: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(rows,) each photo's best cosine to a view of its own one item (-inf without views)."""
        if not self.dense:
            return self(photos).gather(1, items.unsqueeze(1)).squeeze(1)
        views = self.slot_unit.view(self.n_items, -1, photos.shape[1])[items]  # (rows, slots, width)
        best = torch.bmm(views, photos.unsqueeze(2)).squeeze(2).amax(1)
        return best.masked_fill(self.missing[items], float("-inf"))


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
        self.views = ViewTable(F.normalize(views.float(), dim=1), dataset.view_item, self.n_items)
        self.dummy = nn.Parameter(torch.zeros(1))

    def calculate_loss(self, interaction):
        return self.dummy.sum() * 0.0

    def full_sort_predict(self, interaction):
        query = interaction[self.query_field]
        scores = self.views(self.photos[query])
        scores[query == 0] = 0.0  # no photo: no preference
        return scores

    def predict(self, interaction):
        return self.full_sort_predict(interaction).gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)
