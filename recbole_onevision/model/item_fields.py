"""An item's token and token-sequence fields of ``.item`` (category path, brand) read as one vector,
as MCA's ranker and OneVision's item attributes both read them."""
from __future__ import annotations

import torch
from torch import nn

from recbole_onevision.data.dataset import item_token_fields


def register_item_fields(module: nn.Module, dataset) -> list[str]:
    """Registers each token field's (items, width) table as the buffer ``item_<field>`` of
    ``module`` (not saved: the dataset has it); returns the fields."""
    fields = item_token_fields(dataset)
    for field in fields:
        module.register_buffer(f"item_{field}", dataset.item_feat[field].view(dataset.item_num, -1).clone(),
                               persistent=False)
    return fields


def field_vectors(module: nn.Module, fields: list[str], embeddings: nn.ModuleList, items: torch.Tensor) -> torch.Tensor:
    """(..., d) per item, the mean embedding of each field's tokens, summed over the fields;
    padding tokens are masked, as an initialisation may fill an embedding's padding row."""
    out = 0
    for field, embedding in zip(fields, embeddings):
        tokens = getattr(module, f"item_{field}")[items]
        present = (tokens > 0).unsqueeze(-1)
        out = out + (embedding(tokens) * present).sum(-2) / present.sum(-2).clamp_min(1)
    return out
