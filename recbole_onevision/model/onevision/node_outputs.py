"""An output vector per trie node, read against the decoder state and the photo (``node_outputs``).

The decoder's output row for code ``c`` of a level is shared by every prefix, yet below the
first level a code means something else under each parent (the last, a counter, names another
item under every prefix); so P(item) as a product of per-level softmaxes over shared rows cannot
express a flat classifier over items, and a photo-only linear classifier trained on the same
data beats the decoder. Here each code's logit also gains ``<h, e(node)> + <P x, c(node)>``:
``e`` and ``c`` vectors of the node the code leads to under the beam's prefix (the item itself
at the last level), ``h`` the decoder state and ``P x`` a linear map of the row's photo feature,
a direct path from the photo to the output that does not pass through attention, layer norms
and dropout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_onevision.model.trie import SIDTrie

# scale of the content start's logits (cosine-like scores): a softmax over thousands of items
# needs a sharp one, or the start ranks well but trains from near-uniform probabilities
CONTENT_SCALE = 80.0


class NodeOutputs(nn.Module):
    def __init__(self, trie: SIDTrie, d_model: int, photo_width: int):
        super().__init__()
        self.trie = trie
        sizes = [int(trie.item_nodes(level).max()) + 1 for level in range(trie.levels)]
        # zeros: without a content start a new model begins as the decoder without them (plain
        # parameters, so the model's weight initialisation, which reinitialises embeddings, leaves them so)
        self.vectors = nn.ParameterList(nn.Parameter(torch.zeros(n, d_model)) for n in sizes)
        self.photo = nn.Linear(photo_width, d_model, bias=False) if photo_width else None
        # kept apart from the state's vectors so that the content start is not drowned by an
        # untrained decoder state read against large vectors
        self.content = (nn.ParameterList(nn.Parameter(torch.zeros(n, d_model)) for n in sizes)
                        if photo_width else None)

    @torch.no_grad()
    def start_from_content(self, centroids: torch.Tensor) -> None:
        """Start from the items' content: ``centroids`` (item_num, photo width) each item's unit
        mean catalogue-view feature (row 0 and items without views: zeros). ``P`` becomes the
        top ``d_model`` principal directions of the centroids (uncentred) and each node's ``c``
        ``CONTENT_SCALE`` x the unit mean of its items' centroids projected on them."""
        if self.photo is None:
            raise ValueError("NodeOutputs.start_from_content needs the photo path (data with photos)")
        d, width = self.photo.weight.shape
        items = centroids[1:].float()
        basis = torch.linalg.svd(items, full_matrices=False).Vh[:d]
        self.photo.weight.zero_()
        self.photo.weight[:len(basis)] = basis  # photo width < d_model: the other rows stay 0
        for level in range(self.trie.levels):
            table = self.content[level]
            means = torch.zeros(table.shape[0], width).index_add_(0, self.trie.item_nodes(level)[1:], items)
            table.copy_(CONTENT_SCALE * F.normalize(means, dim=1) @ self.photo.weight.T)

    def logits(self, states: torch.Tensor, photo, level: int, children: torch.Tensor) -> torch.Tensor:
        """(rows, codes) each code's logit gain; ``photo``: the rows' fused photo features (zeros
        for a row without a photo; None without photos); ``children``: the trie nodes the codes
        lead to (-1: no SID, 0 there)."""
        index = children.clamp_min(0)
        out = torch.einsum("rd,rcd->rc", states, _rows(self.vectors[level], index))
        if self.photo is not None:
            out = out + torch.einsum("rd,rcd->rc", self.photo(photo), _rows(self.content[level], index))
        return out.masked_fill(children < 0, 0.0)

    def along(self, states: torch.Tensor, photo, level: int, items: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` at the children of ``items``' SID prefix of length ``level`` (teacher forcing)."""
        parent = torch.zeros_like(items) if level == 0 else self.trie.item_nodes(level - 1)[items]
        return self.logits(states, photo, level, self.trie.step(level, parent))


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    # index_select: its backward sums in a fixed order on CPU (advanced indexing's does not)
    return table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[1])
