"""A photo's visual similarity to the catalogue: the one implementation every part uses.

* :func:`best_view_similarity`: each item's best catalogue view (max cosine over its views);
  VisualKNN, MCA, the retrieval baseline and the tokenizer report all rank by it;
* :class:`ViewTable`: the same search laid out for repeated use (a training batch of OneVision);
* :class:`CatalogueSimilarity`: that similarity summarised on the SID trie, OneVision's visual bias.

The bias of a trie node is the best cosine between the photo and any catalogue view of an item
under that node (-1 when no item under it has a view). Beam search needs it for every node of a
level (:meth:`CatalogueSimilarity.nodes`). Teacher forcing needs far less: along one item's SID,
the root's children (level 0), then at each deeper level the children of the item's prefix, all
of them inside the subtree of the item's level-0 node (:meth:`CatalogueSimilarity.along`). So
``along`` reads level 0 from a table filled once per photo by the full catalogue search, and
searches only the views of that one subtree for the deeper levels: on MVShop small about 700 of
150,000 views per row, where every training step used to search them all.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from recbole_onevision.model.trie import SIDTrie

SEARCH_BLOCK = 2 ** 25  # cosines per block of the level-0 table's search (128 MB of float32)
# above this many cosines (units x views) the level-0 table is not filled once but searched per
# training batch: at a million items, views x views would take days on a CPU
LEVEL0_TABLE_LIMIT = 2 ** 38


def best_view_similarity(photos: torch.Tensor, views: torch.Tensor, view_item: torch.Tensor,
                         n_items: int, exclude_views: torch.Tensor | None = None) -> torch.Tensor:
    """(photos, n_items) cosine of each photo to each item's best catalogue view (rows
    L2-normalised beforehand); -inf for items without views. ``exclude_views`` (photos,): a
    view each row may not match (when the "photos" are catalogue views themselves)."""
    similarity = photos @ views.T
    if exclude_views is not None:
        similarity.scatter_(1, exclude_views.unsqueeze(1), float("-inf"))
    # in the inputs' precision: float64 embeddings (a converter's .npy) are searched in float64
    scores = torch.full((len(photos), n_items), float("-inf"), dtype=similarity.dtype, device=similarity.device)
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


class CatalogueSimilarity(nn.Module):
    """``photos`` (n, width) and ``views`` (views, width) L2-normalised; ``view_item`` (views,)
    each view's item; ``item_codes`` (items, levels) each item's SID codes (row 0: padding)."""

    def __init__(self, photos: torch.Tensor, views: torch.Tensor, view_item: torch.Tensor,
                 trie: SIDTrie, item_codes: torch.Tensor):
        super().__init__()
        self.trie = trie
        self.levels = item_codes.shape[1]
        self.node_counts = [int(trie.item_nodes(level).max()) + 1 for level in range(self.levels)]
        self.register_buffer("photos", photos, persistent=False)
        self.register_buffer("views", views, persistent=False)
        self.register_buffer("view_item", view_item, persistent=False)
        self.register_buffer("item_codes", item_codes, persistent=False)
        self.table = ViewTable(views, view_item, len(item_codes))
        # views grouped by the level-0 node of their item: one subtree's views are one slice
        node0 = trie.item_nodes(0)[view_item]
        self.register_buffer("view_node0", node0, persistent=False)
        self.register_buffer("subtree_views", torch.argsort(node0, stable=True), persistent=False)
        counts = torch.bincount(node0, minlength=self.node_counts[0])
        self.register_buffer("subtree_start", counts.cumsum(0) - counts, persistent=False)
        self.register_buffer("subtree_count", counts, persistent=False)
        # level-0 tables, filled on first use: (photos | views, level-0 nodes)
        self.register_buffer("photo_level0", None, persistent=False)
        self.register_buffer("view_level0", None, persistent=False)

    def nodes(self, photos: torch.Tensor, exclude_views: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per level, (rows, nodes of that level): the best cosine between each photo (rows
        L2-normalised) and a view of an item under each node, -1 without one; the last level's
        nodes are the items themselves. ``exclude_views`` (rows,): a view a row may not match."""
        rows = len(photos)
        out = [self.table(photos, exclude_views).clamp_min(-1.0)]
        for level in reversed(range(self.levels - 1)):  # a node's best is its children's best
            parents = self.trie.parents(level + 1).expand(rows, -1)
            out.insert(0, torch.full((rows, self.node_counts[level]), -1.0, device=photos.device)
                       .scatter_reduce_(1, parents, out[0], "amax"))
        return out

    def along(self, ids: torch.Tensor, items: torch.Tensor, of_views: bool = False) -> list[torch.Tensor]:
        """Per level, (rows, codes of that level): :meth:`nodes` of each row's photo (``ids``
        into ``photos``; into ``views`` with ``of_views``, a view then not matching itself) at
        the children of ``items``' SID prefix, -1 for codes that continue no real SID. Photo 0
        (no photo) is flat: 0 for real children."""
        units = self.views[ids] if of_views else self.photos[ids]
        exclude = ids if of_views else None
        root = self.trie.step(0, torch.zeros_like(items))
        level0 = self._level0(ids, of_views).gather(1, root.clamp_min(0))
        out = [level0.masked_fill(root < 0, -1.0)]
        # every (row, view of an item in the subtree of the row item's level-0 node)
        node0 = self.trie.item_nodes(0)[items]
        counts = self.subtree_count[node0]
        row = torch.repeat_interleave(torch.arange(len(items), device=items.device), counts)
        first = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        view = self.subtree_views[self.subtree_start[node0][row] + torch.arange(len(row), device=row.device) - first]
        cosine = (units[row] * self.views[view]).sum(1)
        if exclude is not None:
            cosine = cosine.masked_fill(view == exclude[row], float("-inf"))
        item = self.view_item[view]
        for level in range(1, self.levels):
            above = self.trie.item_nodes(level - 1)
            keep = above[item] == above[items][row]  # under the row item's prefix of length `level`
            size = self.trie.sizes[level]
            slot = row[keep] * size + self.item_codes[item[keep], level]
            best = torch.full((len(items) * size,), -1.0, device=items.device)
            out.append(best.scatter_reduce_(0, slot, cosine[keep], "amax").view(len(items), size))
        if not of_views:  # rows without a photo: no preference among real SIDs
            blank = (ids == 0).unsqueeze(1)
            parent = torch.zeros_like(items)
            for level in range(self.levels):
                real = self.trie.step(level, parent) >= 0
                out[level] = torch.where(blank, torch.where(real, 0.0, -1.0), out[level])
                parent = self.trie.item_nodes(level)[items]
        return out

    def _level0(self, ids: torch.Tensor, of_views: bool) -> torch.Tensor:
        """(rows, level-0 nodes) for photos (or views) ``ids``: from the table filled once, or,
        where that table would be too large to fill, searched for these rows alone."""
        units = self.views if of_views else self.photos
        if len(units) * len(self.views) <= LEVEL0_TABLE_LIMIT:
            return self._level0_table(of_views)[ids]
        with torch.no_grad():
            return self._best_per_node0(units[ids], ids if of_views else None)

    def _level0_table(self, of_views: bool) -> torch.Tensor:
        name = "view_level0" if of_views else "photo_level0"
        if getattr(self, name) is None:
            setattr(self, name, self._search_level0(self.views if of_views else self.photos, of_views))
        return getattr(self, name)

    def _best_per_node0(self, rows: torch.Tensor, own: torch.Tensor | None) -> torch.Tensor:
        """(rows, level-0 nodes) each row's best cosine to a view under each node (-1: none);
        ``own``: each row's own view id, never matched (rows that are catalogue views)."""
        cosine = rows @ self.views.T
        if own is not None:
            cosine[torch.arange(len(rows), device=rows.device), own] = float("-inf")
        out = torch.full((len(rows), self.node_counts[0]), -1.0, device=rows.device)
        return out.scatter_reduce_(1, self.view_node0.expand(len(rows), -1), cosine, "amax")

    @torch.no_grad()
    def _search_level0(self, units: torch.Tensor, of_views: bool) -> torch.Tensor:
        """(len(units), level-0 nodes): the full catalogue search, once per photo, in blocks of
        a fixed size (so a value does not depend on which rows a training batch held)."""
        log = logging.getLogger()
        what = "catalogue views" if of_views else "query photos"
        log.info(f"visual bias: searching the catalogue ({len(self.views)} views) once for "
                 f"{len(units)} {what} (the level-0 table)")
        block = max(1, SEARCH_BLOCK // max(len(self.views), 1))
        out = torch.empty(len(units), self.node_counts[0], device=units.device)
        for start in range(0, len(units), block):
            rows = units[start:start + block]
            own = torch.arange(start, start + len(rows), device=units.device) if of_views else None
            out[start:start + len(rows)] = self._best_per_node0(rows, own)
            if (start // block) % 200 == 199:
                log.info(f"visual bias: {start + len(rows)} / {len(units)} {what}")
        return out
