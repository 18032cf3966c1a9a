"""Prefix trie over the catalogue's semantic IDs, for constrained beam search.

Nodes of level ``l`` are the distinct SID prefixes of length ``l`` (level 0: the root, node 0);
the children of the last level are items (so the last level's nodes are item ids). Edges are stored as sorted keys
``parent * width + code`` per level, so a batch of (node, code) lookups is one
``torch.searchsorted``: memory O(items x levels), whatever the codebook sizes. A level whose
(parents x codes) table is small (``DENSE_TABLE_LIMIT`` entries; every level of Beauty) keeps
that table instead, so a lookup is one gather (~10x faster than the search on Beauty).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

DENSE_TABLE_LIMIT = 1 << 22  # entries (32 MB of int64) up to which a level keeps a (parents, codes) table


class SIDTrie(nn.Module):
    def __init__(self, item_sid: torch.Tensor, sizes: list[int]):
        """``item_sid``: (item_num, levels) codes with row 0 = padding (not an item)."""
        super().__init__()
        sid = item_sid[1:].cpu().numpy()
        if len(np.unique(sid, axis=0)) != len(sid):
            raise ValueError("SIDTrie: item SIDs are not unique; a trie cannot tell such items apart")
        self.levels, self.sizes = sid.shape[1], list(sizes)
        self.width = max(self.sizes)
        parent = np.zeros(len(sid), dtype=np.int64)
        for level in range(self.levels):
            if level == self.levels - 1:
                child = np.arange(1, len(sid) + 1)  # leaves are items (internal ids)
            else:
                _, child = np.unique(sid[:, :level + 1], axis=0, return_inverse=True)
                child = child.reshape(-1)
            keys, first = np.unique(parent * self.width + sid[:, level], return_index=True)
            n_parents = int(parent.max()) + 1
            if n_parents * self.sizes[level] <= DENSE_TABLE_LIMIT:
                table = np.full((n_parents, self.sizes[level]), -1, dtype=np.int64)
                table[parent[first], sid[first, level]] = child[first]
                self.register_buffer(f"table{level}", torch.from_numpy(table), persistent=False)
            else:
                self.register_buffer(f"keys{level}", torch.from_numpy(keys), persistent=False)
                self.register_buffer(f"children{level}", torch.from_numpy(child[first]), persistent=False)
            # each item's node after this level's code (row 0, padding, on node 0)
            self.register_buffer(f"item_nodes{level}", torch.from_numpy(np.r_[0, child]), persistent=False)
            if level:  # each node's parent (a node of the level above; row 0 of the leaves: padding)
                parents = np.zeros(child.max() + 1, dtype=np.int64)
                parents[child] = parent
                self.register_buffer(f"parents{level}", torch.from_numpy(parents), persistent=False)
            parent = child

    def item_nodes(self, level: int) -> torch.Tensor:
        """(item_num,) the node each item's SID reaches after ``level``'s code."""
        return getattr(self, f"item_nodes{level}")

    def parents(self, level: int) -> torch.Tensor:
        """(nodes of ``level``,) the node of ``level - 1`` each node of ``level`` (>= 1) hangs from."""
        return getattr(self, f"parents{level}")

    def step(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """Child of each of ``nodes`` (any shape) for every code of ``level``: shape
        ``nodes.shape + (sizes[level],)``, -1 where that code does not continue a real SID."""
        table = getattr(self, f"table{level}", None)
        if table is not None:
            return table[nodes]
        keys, children = getattr(self, f"keys{level}"), getattr(self, f"children{level}")
        codes = torch.arange(self.sizes[level], device=nodes.device)
        query = nodes.unsqueeze(-1) * self.width + codes
        position = torch.searchsorted(keys, query).clamp_max(len(keys) - 1)
        found = keys[position] == query
        return torch.where(found, children[position], torch.full_like(position, -1))
