"""A dense head beside the decoder (as LIGER pairs dense and generative retrieval).

It scores every item in one softmax over the catalogue, as SASRec does: a state of the model
(``readout``) against each item's vector (the history's ``history_item_embedding``), as a dot
product or, with a ``temperature``, cosine / temperature (so no item ranks by its vector's
norm). Trained beside the SID objective with ``dense_head: {weight: ...}``; it ranks alone with
``ranking: dense`` and joins the beams with ``ranking: fused``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class DenseHead:
    """No weights of its own: it reads the encoder's or decoder's states and the item vectors."""

    def __init__(self, readout: str, temperature: float | None):
        self.readout, self.temperature = readout, temperature

    def state(self, memory: torch.Tensor, mask: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
        """(rows, d_model) what the head reads: ``history``, the encoder's state at the most recent
        history item (each row's last present token: history is the encoder's last segment, in
        order, also once absent tokens are cut out; a row without history reads its last context
        token), as SASRec reads its last position; ``decoder``, ``first``, the decoder's state at
        BOS (may be None with ``history``); ``both``, their sum."""
        if self.readout == "decoder":
            return first
        last = (torch.arange(mask.shape[1], device=mask.device) * ~mask).argmax(1)
        recent = memory[torch.arange(len(memory), device=memory.device), last]
        return recent if self.readout == "history" else recent + first

    def logits(self, states: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(rows, n_items): ``states`` against every item vector (``items``; padding id 0 at -inf)."""
        if self.temperature:
            logits = F.normalize(states, dim=-1) @ F.normalize(items, dim=-1).T / self.temperature
        else:
            logits = states @ items.T
        return logits.index_fill(1, torch.zeros(1, dtype=torch.long, device=logits.device), float("-inf"))

    def log_probs(self, states: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits(states, items), -1)

    def nll(self, states: torch.Tensor, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(rows,) the cross-entropy of ``targets`` over the catalogue."""
        return F.cross_entropy(self.logits(states, items), targets, reduction="none")
