"""An output vector per trie node, read against the decoder state and the photo (``node_outputs``).

The decoder's output row for code ``c`` of a level is shared by every prefix, yet below the
first level a code means something else under each parent (the last, a counter, names another
item under every prefix); so P(item) as a product of per-level softmaxes over shared rows cannot
express a flat classifier over items, and a photo-only linear classifier trained on the same
data beats the decoder. Here each code's logit also gains ``<h + P x, e(node)>``: ``e`` a vector
of the node the code leads to under the beam's prefix (the item itself at the last level), ``h``
the decoder state and ``P x`` a linear map of the row's photo feature, a direct path from the
photo to the output that does not pass through attention, layer norms and dropout.
"""
from __future__ import annotations

import torch
from torch import nn

from recbole_onevision.model.trie import SIDTrie


class NodeOutputs(nn.Module):
    def __init__(self, trie: SIDTrie, d_model: int, photo_width: int):
        super().__init__()
        self.trie = trie
        sizes = [int(trie.item_nodes(level).max()) + 1 for level in range(trie.levels)]
        # zeros: a new model starts as the decoder without them (plain parameters, so the model's
        # weight initialisation, which reinitialises embeddings, leaves them so)
        self.vectors = nn.ParameterList(nn.Parameter(torch.zeros(n, d_model)) for n in sizes)
        self.photo = nn.Linear(photo_width, d_model, bias=False) if photo_width else None

    def logits(self, states: torch.Tensor, photo, level: int, children: torch.Tensor) -> torch.Tensor:
        """(rows, codes) each code's logit gain; ``photo``: the rows' fused photo features (zeros
        for a row without a photo; None without photos); ``children``: the trie nodes the codes
        lead to (-1: no SID, 0 there)."""
        index = children.clamp_min(0)
        table = self.vectors[level]
        # index_select: its backward sums in a fixed order on CPU (advanced indexing's does not)
        vectors = table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[1])
        if self.photo is not None:
            states = states + self.photo(photo)
        out = torch.einsum("rd,rcd->rc", states, vectors)
        return out.masked_fill(children < 0, 0.0)

    def along(self, states: torch.Tensor, photo, level: int, items: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` at the children of ``items``' SID prefix of length ``level`` (teacher forcing)."""
        parent = torch.zeros_like(items) if level == 0 else self.trie.item_nodes(level - 1)[items]
        return self.logits(states, photo, level, self.trie.step(level, parent))
