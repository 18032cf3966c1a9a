"""The SID decoder: emits an item's semantic ID code by code (BOS first), and its likelihood."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_onevision.model.onevision.codes import SIDCodes
from recbole_onevision.model.onevision.node_outputs import NodeOutputs
from recbole_onevision.model.onevision.params import OneVisionParams


class SIDDecoder(nn.Module):
    """A transformer decoder over the encoder's memory; one output row per SID token, and each
    level's logits cover that level's codes only; with ``nodes`` (``node_outputs``) each code's
    logit also reads the node it leads to and the photo (:class:`NodeOutputs`)."""

    def __init__(self, params: OneVisionParams, n_tokens: int, nodes: NodeOutputs | None = None):
        super().__init__()
        d = params.d_model
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d, params.n_heads, params.ffn_size, params.dropout, batch_first=True,
                                       norm_first=True),
            params.layers, norm=nn.LayerNorm(d))
        self.input_dropout = nn.Dropout(params.dropout)
        self.output = nn.Linear(d, n_tokens)
        self.nodes = nodes

    def forward(self, memory, mask, tokens: torch.Tensor, codes: SIDCodes) -> torch.Tensor:
        """Output states for decoder input ``tokens`` (BOS first): (rows, len, d_model)."""
        steps = tokens.shape[1]
        causal = torch.triu(torch.full((steps, steps), float("-inf"), device=tokens.device), 1)
        return self.decoder(self.input_dropout(codes.steps(tokens)), memory, tgt_mask=causal,
                            memory_key_padding_mask=mask)

    def level_logits(self, states: torch.Tensor, level: int, codes: SIDCodes) -> torch.Tensor:
        rows = codes.level_rows(level)  # this level's output rows only
        return F.linear(states, self.output.weight[rows], self.output.bias[rows])

    def log_likelihood(self, memory, mask, items: torch.Tensor, codes: SIDCodes, prior=None, bias=None,
                       attributes=None, photo=None):
        """Teacher forcing: (rows, levels) log-probabilities of each level of ``items``' SIDs over
        the level's whole codebook, and the decoder's states at BOS (rows, d_model). ``prior``:
        per level, the rows' visual similarity along ``items``' SIDs (:meth:`VisualBias.along`),
        added through ``bias`` (the :class:`VisualBias`); None without it. ``attributes``: the
        :class:`ItemAttributes` whose logits each level adds, or None. ``photo``: the rows' fused
        photo features, read by :attr:`nodes` (needed when it is on)."""
        targets = codes.item_tokens[items]
        bos = torch.full((len(items), 1), codes.bos_token, device=items.device)
        states = self(memory, mask, torch.cat([bos, targets[:, :-1]], 1), codes)
        out = []
        tables = attributes.tables() if attributes is not None else None
        for level in range(codes.levels):
            logits = self.level_logits(states[:, level], level, codes)
            if attributes is not None:
                logits = logits + attributes.along(states[:, level], level, items, tables[level])
            if self.nodes is not None:
                logits = logits + self.nodes.along(states[:, level], photo, level, items)
            if prior is not None:
                logits = logits + bias.scaled(prior[level], level)
            logp = torch.log_softmax(logits, -1)
            out.append(logp.gather(1, codes.codes(targets[:, level], level).unsqueeze(1)).squeeze(1))
        return torch.stack(out, 1), states[:, 0]
