"""Full-sort ranking without a (rows, n_items) score table: each row's top-k list.

RecBole's evaluator scores every item for every row of a batch and then keeps each row's top-k;
at a million items one batch of 4,096 rows is 16 GB of scores. :func:`ranked_lists` ranks a
batch in blocks of rows (at most :data:`SCORE_BLOCK` scores at once) and keeps only each row's
best ``k`` items. A model whose search already ends in a short list (OneVision's beams, MCA's
recalled and ranked candidates) gives it through ``full_sort_topk(interaction, k)``, and no
dense row is made at all. The evaluator (:mod:`recbole_onevision.metrics`) and the search API
both rank through here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SCORE_BLOCK = 2 ** 25  # scores (or catalogue cosines) one block of rows may hold: 128 MB of float32


@dataclass
class RankedLists:
    """Each row's best items: ``items`` and ``scores`` (rows, k), best first; a slot with score
    -inf holds no item (item 0, the padding id)."""
    scores: torch.Tensor
    items: torch.Tensor

    def __len__(self) -> int:
        return len(self.items)


def block_rows(width: int) -> int:
    """Rows per block when each row needs ``width`` values (items, or catalogue views)."""
    return max(1, SCORE_BLOCK // max(int(width), 1))


def top_of(scores: torch.Tensor, k: int) -> RankedLists:
    """The best ``k`` of dense ``scores`` (rows, n_items; column 0, the padding item, is set to
    -inf in place), padded with empty slots to ``k``."""
    scores[:, 0] = float("-inf")
    values, items = scores.topk(min(k, scores.shape[1]), dim=1)
    return pad(RankedLists(values, items), k)


def pad(lists: RankedLists, k: int) -> RankedLists:
    """``lists`` cut or padded to exactly ``k`` slots; -inf slots are emptied (item 0), so an
    item a model did not score is never counted as recommended."""
    scores, items = lists.scores[:, :k], lists.items[:, :k]
    missing = k - scores.shape[1]
    if missing > 0:
        scores = torch.cat([scores, scores.new_full((len(scores), missing), float("-inf"))], 1)
        items = torch.cat([items, items.new_zeros((len(items), missing))], 1)
    return RankedLists(scores, items.masked_fill(scores == float("-inf"), 0))


def ranked_lists(model, interaction, n_items: int, k: int, history_index=None) -> RankedLists:
    """Each row's best ``k`` items by ``model`` (padding item 0 and, when given, RecBole's
    ``history_index`` pairs never ranked), computed in blocks of rows."""
    own = getattr(model, "full_sort_topk", None)
    step = block_rows(n_items)
    parts = []
    for start in range(0, len(interaction), step):
        block = interaction[start:start + step]
        history = None
        if history_index is not None:
            row, item = history_index
            inside = (row >= start) & (row < start + step)
            history = (row[inside] - start, item[inside])
        if own is not None and history is None:
            lists = own(block, k)
            scores = lists.scores.masked_fill(lists.items == 0, float("-inf"))
            order = scores.argsort(dim=1, descending=True, stable=True)
            parts.append(pad(RankedLists(scores.gather(1, order), lists.items.gather(1, order)), k))
            continue
        scores = model.full_sort_predict(block).view(-1, n_items)
        if history is not None:
            scores[history] = float("-inf")
        parts.append(top_of(scores, k))
    return RankedLists(torch.cat([p.scores for p in parts]), torch.cat([p.items for p in parts]))
