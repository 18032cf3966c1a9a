"""A pre-norm transformer encoder layer whose feed-forward block skips absent tokens.

OneVision's encoder rows are mostly padding while training: a history of up to 20 items where
most users have a handful (Beauty's training rows: 7.7 of 21 tokens present on average), and
the feed-forward block (two matrix products of width ``ffn_size`` and a dropout mask over them)
is most of a layer's work. Absent tokens are masked keys, so nothing present ever reads them;
running the feed-forward block on the present tokens alone leaves every present token's output
unchanged. Absent tokens keep their attention-updated state (read by nothing).
"""
from __future__ import annotations

import torch
from torch import nn


class PackedEncoderLayer(nn.TransformerEncoderLayer):
    """:class:`torch.nn.TransformerEncoderLayer` (``norm_first=True``, same parameters and
    state-dict keys); while training with a key-padding mask, the feed-forward block runs on the
    present tokens only. In evaluation (rows already compacted, and torch's fused fast path
    available) it is the parent layer."""

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if not (self.training and self.norm_first and src_key_padding_mask is not None):
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        x = src + self._sa_block(self.norm1(src), src_mask, src_key_padding_mask, is_causal=is_causal)
        # the encoder hands layers a float mask (-inf absent, 0 present); a bool one: True absent
        present = src_key_padding_mask == 0
        tokens = x[present]
        return x.index_put((present,), tokens + self._ff_block(self.norm2(tokens)))
