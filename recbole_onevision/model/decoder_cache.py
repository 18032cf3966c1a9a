"""Incremental decoding of a pre-norm ``nn.TransformerDecoder`` with cached keys and values.

Beam search without a cache re-runs the whole decoder over every beam's prefix at each SID
level, and projects the encoder memory into cross-attention keys and values again for every
beam at every level; with 20 beams that projection is most of the decoding work. Here the
memory's keys and values are projected once per query row, and each level runs only its new
token, attending to the cached keys and values of the earlier ones. In eval mode (no dropout)
the output equals the full decoder's last position (tested against it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DecoderCache:
    """Decoding state of ``beams`` hypotheses over ``memory`` (rows, tokens, d_model) with key
    padding ``mask`` (True = absent). :meth:`step` decodes one token for some of the beams;
    :meth:`reorder` follows the beam search's selection to the next level."""

    def __init__(self, decoder: nn.TransformerDecoder, memory: torch.Tensor, mask: torch.Tensor):
        self.decoder = decoder
        self.layers = list(decoder.layers)
        first = self.layers[0]
        if not all(layer.norm_first for layer in self.layers):
            raise ValueError("DecoderCache: expected pre-norm decoder layers (norm_first=True)")
        self.heads = first.self_attn.num_heads
        self.width = first.self_attn.embed_dim
        self.cross = [self._project(layer.multihead_attn, memory, slice(1, 3)) for layer in self.layers]
        self.attend = (~mask)[:, None, None, :]  # (rows, 1, 1, tokens): True = attend
        self.past: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self.rows = self.beams = len(memory)  # one beam per row before the first step

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(n, tokens, d_model) -> (n, heads, tokens, d_model / heads)."""
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def _project(self, attention: nn.MultiheadAttention, x: torch.Tensor, parts: slice) -> list[torch.Tensor]:
        """``x`` through ``parts`` of the packed query/key/value projection (0: query, 1: key,
        2: value), split into heads."""
        rows = slice(parts.start * self.width, parts.stop * self.width)
        bias = None if attention.in_proj_bias is None else attention.in_proj_bias[rows]
        projected = F.linear(x, attention.in_proj_weight[rows], bias)
        return [self._split(part) for part in projected.chunk(parts.stop - parts.start, -1)]

    def _attend(self, attention: nn.MultiheadAttention, query, key, value, mask=None) -> torch.Tensor:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return attention.out_proj(out.transpose(1, 2).reshape(out.shape[0], -1, self.width))

    def _cross_attend(self, attention: nn.MultiheadAttention, query: torch.Tensor, memory: list[torch.Tensor],
                      live: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Cross-attention of the live beams' queries (live, heads, 1, dh) to their rows' memory.
        A row's beams attend to the same keys and values, so they go in as that row's query
        positions (rows, heads, beams per row, dh) instead of copying the memory per beam."""
        key, value = memory
        per_row, every = self.beams // self.rows, len(live) == self.beams
        if every:  # every beam live: beams are already grouped by row
            dense = query.reshape(self.rows, per_row, query.shape[1], query.shape[3])
        else:
            column = live - rows * per_row  # each live beam's place among its row's
            dense = query.new_zeros(self.rows, per_row, query.shape[1], query.shape[3])
            dense[rows, column] = query.squeeze(2)
        out = F.scaled_dot_product_attention(dense.transpose(1, 2), key, value, attn_mask=self.attend)
        out = out.transpose(1, 2).reshape(self.beams, -1)
        return attention.out_proj((out if every else out[live]).unsqueeze(1))

    def step(self, inputs: torch.Tensor, live: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Decode one position for the beams ``live`` (indices into the current beams), whose
        memory rows are ``rows``: ``inputs`` (live, d_model) embedded tokens -> (live, d_model)
        output states. Beams not in ``live`` get zero keys/values (they are never extended)."""
        x = inputs.unsqueeze(1)
        every = len(live) == self.beams  # no beam dropped: no scatter into / gather from all beams
        for i, layer in enumerate(self.layers):
            query, key, value = self._project(layer.self_attn, layer.norm1(x), slice(0, 3))
            if not every:
                full_key = torch.zeros(self.beams, *key.shape[1:], dtype=key.dtype, device=key.device)
                full_value = torch.zeros_like(full_key)
                full_key[live], full_value[live] = key, value
                key, value = full_key, full_value
            if self.past[i] is not None:
                key = torch.cat([self.past[i][0], key], 2)
                value = torch.cat([self.past[i][1], value], 2)
            self.past[i] = (key, value)
            if not every:
                key, value = key[live], value[live]
            x = x + layer.dropout1(self._attend(layer.self_attn, query, key, value))
            query, = self._project(layer.multihead_attn, layer.norm2(x), slice(0, 1))
            x = x + layer.dropout2(self._cross_attend(layer.multihead_attn, query, self.cross[i], live, rows))
            feed = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm3(x)))))
            x = x + layer.dropout3(feed)
        if self.decoder.norm is not None:
            x = self.decoder.norm(x)
        return x.squeeze(1)

    def reorder(self, parents: torch.Tensor) -> None:
        """Keep, in this order, the beams ``parents`` (indices into the current beams)."""
        self.past = [None if kv is None else (kv[0][parents], kv[1][parents]) for kv in self.past]
        self.beams = len(parents)
