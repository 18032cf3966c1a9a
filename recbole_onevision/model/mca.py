"""MCA: the multi-stage cascade OneVision replaces, as one RecBole model.

1. **Recall**: the ``recall_size`` items whose best catalogue view is closest (cosine) to the
   query photo, by exact search (:class:`~recbole_onevision.model.visual_similarity.ViewTable`),
   or with ``recall_index: hnsw | ivf`` through a faiss index over the views
   (:mod:`recbole_onevision.model.ann_recall`); items it does not retrieve are not recalled.
2. **Rank**: a personalised ranker scores each recalled item from the query photo, the user
   (history items and profile tokens), the item (id, attribute tokens, its views' mean
   embedding) and the recall similarity, as a correction on top of the scaled similarity (so an
   untrained ranker keeps the recall order); trained with RecBole's trainer by cross-entropy over
   each training row's recalled set (the engaged item swapped in where recall missed it, so
   every row teaches the ranker).

``full_sort_predict`` returns the ranker's scores on the recalled items and -inf elsewhere, so
RecBole's evaluator treats it like any model. ``stage_seconds`` accumulates the time spent in
each stage at inference (read by benchmarks).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_onevision.data.dataset import profile_fields
from recbole_onevision.model.ann_recall import view_index
from recbole_onevision.model.item_fields import field_vectors, register_item_fields
from recbole_onevision.topk import RankedLists
from recbole_onevision.model.visual_knn import check_recall_size, photos_and_views
from recbole_onevision.model.visual_similarity import ViewTable


class MCA(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        photos, views = photos_and_views(dataset, "MCA")
        self.recall_size = int(config["recall_size"])
        check_recall_size(config, self.recall_size, self.n_items)
        self.query_field = config["QUERY_ID_FIELD"] or "query_id"
        self.use_query_photos(photos)
        unit = F.normalize(views.float(), dim=1)
        self.views = ViewTable(unit, dataset.view_item, self.n_items)
        self.recall_index = view_index(config, dataset, unit, self.n_items)  # None: exact search
        mean_view = torch.zeros(self.n_items, views.shape[1]).index_add_(0, dataset.view_item, unit)
        self.register_buffer("item_visual", F.normalize(mean_view, dim=1), persistent=False)

        d = config["embedding_size"]
        self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
        self.item_fields = register_item_fields(self, dataset)
        self.field_embedding = nn.ModuleList(nn.Embedding(dataset.num(f), d, padding_idx=0) for f in self.item_fields)
        self.profile_fields = profile_fields(config, dataset)
        self.profile_embedding = nn.ModuleList(nn.Embedding(dataset.num(f), d, padding_idx=0)
                                               for f in self.profile_fields)
        self.visual = nn.Linear(views.shape[1], d)
        hidden = config["ranker_hidden"]
        self.ranker = nn.Sequential(nn.Linear(6 * d + 1, hidden), nn.ReLU(), nn.Dropout(config["dropout"]),
                                    nn.Linear(hidden, 1))
        # score = similarity_scale x recall similarity + MLP: at initialisation (MLP ~ 0) the
        # ranker keeps the recall order, and it learns what to change from there
        self.similarity_scale = nn.Parameter(torch.tensor(1 / 0.07))
        self.stage_seconds = {"recall": 0.0, "rank": 0.0}

    def use_query_photos(self, photos: torch.Tensor) -> None:
        """The photo embeddings query ids index from now on (row 0: no photo); the dataset's at
        construction, a search's own photos in :mod:`recbole_onevision.search`."""
        device = self.photos.device if hasattr(self, "photos") else photos.device  # stays where the model is
        self.register_buffer("photos", F.normalize(photos.float(), dim=1).to(device), persistent=False)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(..., d) learned item id + attribute tokens (token sequences averaged)."""
        return self.item_embedding(items) + field_vectors(self, self.item_fields, self.field_embedding, items)

    def recall(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, recall_size) recalled items and their visual similarity, best first."""
        query = interaction[self.query_field]
        photos = self.photos[query]
        scores = self.views(photos) if self.recall_index is None else self.recall_index(photos, self.recall_size)
        scores[:, 0] = float("-inf")
        scores[query == 0] = torch.where(torch.isfinite(scores[query == 0]), 0.0, float("-inf"))
        similarity, items = scores.topk(self.recall_size, dim=1)
        return items, similarity

    def rank(self, interaction, items: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
        """(rows, candidates) ranker scores."""
        seq = interaction[self.ITEM_SEQ]
        history = self.item_vectors(seq).sum(1) / (seq > 0).sum(1, keepdim=True).clamp_min(1)
        user = history
        for field, embedding in zip(self.profile_fields, self.profile_embedding):
            user = user + embedding(interaction[field])
        query = self.visual(self.photos[interaction[self.query_field]])
        item = self.item_vectors(items) + self.visual(self.item_visual[items])
        rows, candidates = items.shape
        expand = lambda x: x.unsqueeze(1).expand(rows, candidates, -1)  # noqa: E731
        user, query = expand(user), expand(query)
        similarity = similarity.clamp_min(-1)  # -inf for candidates without views
        features = torch.cat([user, query, item, user * item, query * item, expand(history) * item,
                              similarity.unsqueeze(2)], 2)
        return self.similarity_scale * similarity + self.ranker(features).squeeze(2)

    def calculate_loss(self, interaction):
        target = interaction[self.POS_ITEM_ID]
        with torch.no_grad():
            items, similarity = self.recall(interaction)
            missed = ~(items == target.unsqueeze(1)).any(1)
            items[missed, -1] = target[missed]  # the engaged item is always a candidate
            similarity[missed, -1] = self.views.of_items(
                self.photos[interaction[self.query_field][missed]], target[missed])
        logits = self.rank(interaction, items, similarity)
        if self.recall_index is not None:  # slots the index left empty are no candidates
            logits = logits.masked_fill(torch.isinf(similarity) & (items != target.unsqueeze(1)), float("-inf"))
        return F.cross_entropy(logits, (items == target.unsqueeze(1)).float().argmax(1))

    def recall_and_rank(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, recall_size) the recalled items and the ranker's scores on them (timed by stage)."""
        start = time.perf_counter()
        items, similarity = self.recall(interaction)
        recalled = time.perf_counter()
        scores = self.rank(interaction, items, similarity)
        self.stage_seconds["recall"] += recalled - start
        self.stage_seconds["rank"] += time.perf_counter() - recalled
        if self.recall_index is not None:  # slots the index left empty: not recalled
            scores = scores.masked_fill(torch.isinf(similarity), float("-inf"))
        return items, scores

    def full_sort_predict(self, interaction):
        items, scores = self.recall_and_rank(interaction)
        out = torch.full((len(items), self.n_items), float("-inf"), device=items.device)
        return out.scatter_(1, items, scores)

    def full_sort_topk(self, interaction, k: int) -> RankedLists:
        """The ranked candidates themselves, best first (no dense score row)."""
        items, scores = self.recall_and_rank(interaction)
        scores, order = scores.sort(dim=1, descending=True, stable=True)
        return RankedLists(scores, items.gather(1, order))

    def predict(self, interaction):
        return self.full_sort_predict(interaction).gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)
