"""The SID vocabulary: one token per (level, code), shared by the encoder's history and the decoder."""
from __future__ import annotations

import torch
from torch import nn


class SIDCodes(nn.Module):
    """Token ids and embeddings of the items' semantic IDs. Level ``l``'s code ``c`` is token
    ``offsets[l] + c``; two more tokens follow the codes: padding and BOS. ``item_sid`` (items x
    levels) is saved with the weights, so a checkpoint cannot be read on other SIDs."""

    def __init__(self, item_sid: torch.Tensor, sizes: list[int], d_model: int):
        super().__init__()
        self.sizes, self.levels = list(sizes), len(sizes)
        offsets = torch.tensor([0] + self.sizes[:-1]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        n_tokens = sum(self.sizes)
        self.n_tokens, self.pad_token, self.bos_token = n_tokens, n_tokens, n_tokens + 1
        item_tokens = item_sid.clamp_min(0) + offsets
        item_tokens[0] = self.pad_token
        self.register_buffer("item_tokens", item_tokens, persistent=False)
        self.register_buffer("item_sid", item_sid.clone())
        self.token_embedding = nn.Embedding(n_tokens + 2, d_model, padding_idx=self.pad_token)
        self.level_embedding = nn.Embedding(self.levels + 1, d_model)

    def items(self, items: torch.Tensor) -> torch.Tensor:
        """The sum of each item's SID code embeddings (padding item 0: zeros): one history token."""
        return self.token_embedding(self.item_tokens[items]).sum(-2)

    def steps(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for ``tokens`` (rows, steps), BOS first: token + position (level) embedding."""
        return self.token_embedding(tokens) + self.level_embedding.weight[:tokens.shape[1]]

    def step(self, tokens: torch.Tensor, level: int) -> torch.Tensor:
        """Decoder input of one step: the previous level's tokens (rows,) at position ``level``."""
        return self.token_embedding(tokens) + self.level_embedding.weight[level]

    def codes(self, tokens: torch.Tensor, level: int) -> torch.Tensor:
        """Level ``level``'s code of each token."""
        return tokens - self.offsets[level]

    def level_rows(self, level: int) -> slice:
        """Level ``level``'s rows of a (tokens, ...) table, such as the decoder's output layer."""
        start = int(self.offsets[level])
        return slice(start, start + self.sizes[level])
