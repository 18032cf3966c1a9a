"""What the catalogue says of an item beyond its SID: its attribute tokens (``item_attributes``).

Look-alikes share their SID's content levels and differ by brand or price, the attributes a
user's choice among them turns on; the SID does not carry them (VRQ weighs the category path
first), and the last SID code is a counter whose meaning differs under every prefix. So each
item gets a learned vector, the mean embedding of each token or token-sequence field of
``.item`` summed over fields (as MCA's ranker reads them), used twice:

* in the encoder, added to each history item's token, so the user's brands and price levels
  are in what the decoder reads;
* in the decoder's output, each code's logit gains ``<W_l h, a(node)>``: the state projected
  against the mean attribute vector of the items under the trie node the code leads to (the item
  itself at the last level), so the decoder can tell look-alikes apart by what they are.
"""
from __future__ import annotations

import torch
from torch import nn

from recbole_onevision.model.item_fields import field_vectors, register_item_fields
from recbole_onevision.model.trie import SIDTrie


class ItemAttributes(nn.Module):
    def __init__(self, dataset, trie: SIDTrie, d_model: int):
        super().__init__()
        self.fields = register_item_fields(self, dataset)
        if not self.fields:
            raise ValueError("config item_attributes: True needs token or token_seq item fields (load_col: item); "
                             "this dataset loads none")
        self.trie, self.levels = trie, trie.levels
        self.embedding = nn.ModuleList(nn.Embedding(dataset.num(f), d_model, padding_idx=0) for f in self.fields)
        for level in range(self.levels):  # items per node, for the nodes' means
            nodes = trie.item_nodes(level)
            count = torch.bincount(nodes[1:], minlength=int(nodes.max()) + 1).clamp_min(1)
            self.register_buffer(f"node_count{level}", count.unsqueeze(1).float(), persistent=False)
        self.project = nn.ModuleList(nn.Linear(d_model, d_model, bias=False) for _ in range(self.levels))
        self._cached: tuple | None = None  # (weights' versions, node tables) for inference

    def items(self, items: torch.Tensor) -> torch.Tensor:
        """(..., d_model) each item's attribute vector (padding item 0: zeros)."""
        return field_vectors(self, self.fields, self.embedding, items)

    def tables(self) -> list[torch.Tensor]:
        """Per level, (nodes, d_model) the mean attribute vector of the items under each node.
        Training computes them once per forward; without gradients they are kept until the
        weights change (an optimiser step or a load bumps their version), so beam search does
        not recompute them for every batch."""
        if torch.is_grad_enabled():
            return self._tables()
        version = tuple((w.data_ptr(), w._version) for w in self.embedding.parameters())
        if self._cached is None or self._cached[0] != version:
            self._cached = (version, self._tables())
        return self._cached[1]

    def _tables(self) -> list[torch.Tensor]:
        every = self.items(torch.arange(1, len(self.trie.item_nodes(0)), device=self.node_count0.device))
        out = []
        for level in range(self.levels):
            count = getattr(self, f"node_count{level}")
            total = torch.zeros(len(count), every.shape[1], device=every.device)
            out.append(total.index_add_(0, self.trie.item_nodes(level)[1:], every) / count)
        return out

    def logits(self, states: torch.Tensor, level: int, children: torch.Tensor, table: torch.Tensor | None = None):
        """(rows, codes) the logit each code gains; ``children``: the trie nodes the codes lead to
        (-1: no SID, 0 there); ``table``: this level's of :meth:`tables` (fetched if None)."""
        nodes = self.tables()[level] if table is None else table
        # index_select, not nodes[children]: its backward (index_add) sums in a fixed order on CPU,
        # advanced indexing's does not, and runs must repeat bitwise
        index = children.clamp_min(0)
        vectors = nodes.index_select(0, index.reshape(-1)).view(*index.shape, nodes.shape[1])  # (rows, codes, d)
        out = torch.einsum("rd,rcd->rc", self.project[level](states), vectors)
        return out.masked_fill(children < 0, 0.0)

    def along(self, states: torch.Tensor, level: int, items: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` at the children of ``items``' SID prefix of length ``level`` (teacher forcing)."""
        parent = torch.zeros_like(items) if level == 0 else self.trie.item_nodes(level - 1)[items]
        return self.logits(states, level, self.trie.step(level, parent), table)
