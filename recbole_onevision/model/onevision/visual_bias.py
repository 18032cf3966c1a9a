"""The photo's similarity to the catalogue as a prior on the decoder's logits (``visual_bias``).

At each level a code's logit gains a learned per-level scale (initially ``visual_bias``) x the
best raw-feature cosine between the query photo and a view of an item under the trie node that
code leads to (-1 for codes that continue no SID), fusing dense and generative retrieval as
LIGER does. The decoder then learns what to add to visual similarity (personalisation, the
category) instead of memorising every item's appearance. On only with photos and views.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_onevision.model.trie import SIDTrie
from recbole_onevision.model.visual_similarity import CatalogueSimilarity


class VisualBias(nn.Module):
    def __init__(self, dataset, trie: SIDTrie, item_codes: torch.Tensor, scale: float, levels: int):
        super().__init__()
        photos = F.normalize(dataset.query_embedding.float(), dim=1)
        self.catalogue = CatalogueSimilarity(photos, F.normalize(dataset.view_embedding.float(), dim=1),
                                             dataset.view_item.clone(), trie, item_codes)
        # learned in log space: Adam's ~learning-rate-sized steps then change it by a ratio, so it
        # can move by several times in one training run (a plain scale barely moved)
        self.log_scale = nn.Parameter(torch.full((levels,), float(math.log(scale))))

    def use_query_photos(self, embeddings: torch.Tensor) -> None:
        """The photo embeddings query ids index from now on (row 0: no photo)."""
        catalogue = self.catalogue
        photos = F.normalize(embeddings.float(), dim=1).to(catalogue.views.device)
        catalogue.register_buffer("photos", photos, persistent=False)
        catalogue.register_buffer("photo_level0", None, persistent=False)  # searched again on first use

    def photos(self, query: torch.Tensor) -> list[torch.Tensor]:
        """Per level, (rows, nodes): the query photos' similarity to every trie node (flat, 0,
        for rows without a photo, query id 0), for beam search."""
        out = self.catalogue.nodes(self.catalogue.photos[query])
        return [level.masked_fill((query == 0).unsqueeze(1), 0.0) for level in out]

    def along(self, query: torch.Tensor, items: torch.Tensor) -> list[torch.Tensor]:
        """Per level, (rows, codes): the query photos' similarity to the children of ``items``'
        SID prefixes, for teacher forcing."""
        return self.catalogue.along(query, items)

    def along_views(self, views: torch.Tensor, items: torch.Tensor) -> list[torch.Tensor]:
        """As :meth:`along` for catalogue views; a view's bias comes from the *other* views
        (matching itself would teach blind trust)."""
        return self.catalogue.along(views, items, of_views=True)

    def scaled(self, prior: torch.Tensor, level: int) -> torch.Tensor:
        """Level ``level``'s logit bias from teacher forcing's prior (:meth:`along`)."""
        return self.log_scale[level].exp() * prior

    def of_children(self, similarity: torch.Tensor, level: int, children: torch.Tensor,
                    rows: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, codes) the bias of each code of ``level`` given the trie ``children`` of the rows'
        current prefixes (-1: no such SID, bias as for the least similar item). ``similarity``:
        level ``level`` of :meth:`photos`; ``rows``: the row of it each row of ``children`` reads
        (default: the same row), so beams index their query's row instead of copying it."""
        index = children.clamp_min(0)
        prior = similarity.gather(1, index) if rows is None else similarity[rows.unsqueeze(1), index]
        return self.scaled(prior.masked_fill(children < 0, -1.0), level)
