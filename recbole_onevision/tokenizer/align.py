"""VRQ's alignment head: pulls views of one product together across viewpoints.

Positive pairs (training split only): a training query photo <-> a catalogue view of the
product it shows, and a catalogue view <-> another view of the same item. Each batch holds
distinct items, so every other row is a true negative. Loss: symmetric InfoNCE (in-batch
negatives, temperature) + circle loss (Sun et al., CVPR 2020) + an attribute term that teaches
one prototype per attribute token (category level, brand, price bucket), so a query photo,
which has no attributes, can predict them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from recbole_onevision.tokenizer.inputs import TokenizerInputs


class AlignmentHead(nn.Module):
    """Image embedding -> unit vector (MLP with a linear shortcut) + attribute prototypes."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, vocab_sizes: list[int]):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.shortcut = nn.Linear(in_dim, out_dim, bias=False)
        self.prototypes = nn.ParameterList(nn.Parameter(torch.randn(n, out_dim) * 0.1) for n in vocab_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        return F.normalize(self.mlp(x) + self.shortcut(x), dim=-1)


def info_nce(a: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = a @ p.T / temperature
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def circle_loss(a: torch.Tensor, p: torch.Tensor, margin: float, gamma: float) -> torch.Tensor:
    """Circle loss with one positive per row (the diagonal) and in-batch negatives."""
    s = a @ p.T
    pos = s.diagonal()
    eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
    alpha_p = (1 + margin - pos).clamp_min(0).detach()
    alpha_n = (s + margin).clamp_min(0).detach()
    logit_p = -gamma * alpha_p * (pos - (1 - margin))
    logit_n = (gamma * alpha_n * (s - margin)).masked_fill(eye, float("-inf"))
    return F.softplus(torch.logsumexp(logit_n, dim=1) + logit_p).mean()


def attribute_logits(h: torch.Tensor, prototype: torch.Tensor, temperature: float) -> torch.Tensor:
    return h @ F.normalize(prototype, dim=-1).T / temperature


def attribute_targets(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """Rows of ``tokens`` (0 = none) as distributions over the vocabulary (uniform over a bag)."""
    target = torch.zeros(len(tokens), vocab)
    target.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=torch.float))
    target[:, 0] = 0
    return target / target.sum(1, keepdim=True).clamp_min(1)


def _grouped(owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by owner, and each owner's start and count (CSR)."""
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def train_head(inputs: TokenizerInputs, params, show_progress: bool = False) -> AlignmentHead:
    """Fit the head on the training split's positive pairs; deterministic under ``params.seed``."""
    rng = np.random.default_rng(params.seed)
    views = torch.from_numpy(inputs.view_embedding)
    n = inputs.item_num
    with torch.random.fork_rng(devices=[]):  # leave the global stream (model init) untouched
        torch.manual_seed(params.seed)
        head = AlignmentHead(views.shape[1], params.hidden, params.dim, [f.vocab for f in inputs.attributes])
    optimizer = torch.optim.AdamW(head.parameters(), lr=params.lr, weight_decay=1e-4)

    view_order, view_start, view_count = _grouped(inputs.view_item, n)
    queries = inputs.train_queries
    query_order, query_start, query_count = _grouped(inputs.query_product[queries], n)
    query_rows = torch.from_numpy(inputs.query_embedding[queries]) if len(queries) else None
    items = np.flatnonzero(view_count)
    if len(items) < 2:
        raise ValueError("VRQ alignment needs catalogue views of at least 2 items")
    tokens = [torch.from_numpy(f.tokens) for f in inputs.attributes]
    batch = min(params.batch_size, len(items))
    permutation, cursor = rng.permutation(items), 0
    progress = tqdm(range(params.align_steps), desc="VRQ alignment", disable=not show_progress)
    for _ in progress:
        if cursor + batch > len(permutation):
            permutation, cursor = rng.permutation(items), 0
        chosen = permutation[cursor:cursor + batch]
        cursor += batch
        count = view_count[chosen]
        anchor_view = view_start[chosen] + rng.integers(0, count)
        other = (anchor_view - view_start[chosen] + 1 + rng.integers(0, np.maximum(count - 1, 1))) % count
        positive = views[view_order[view_start[chosen] + np.where(count > 1, other, 0)]]
        anchor = views[view_order[anchor_view]].clone()
        if query_rows is not None:  # a query_share of anchors (where the item has one): a query photo
            use_query = (query_count[chosen] > 0) & (rng.random(len(chosen)) < params.query_share)
            picked = query_start[chosen[use_query]] + rng.integers(0, query_count[chosen[use_query]])
            anchor[torch.from_numpy(use_query)] = query_rows[query_order[picked]]
        a, p = head(anchor), head(positive)
        loss = params.infonce_weight * info_nce(a, p, params.temperature)
        if params.circle_weight:
            loss = loss + params.circle_weight * circle_loss(a, p, params.circle_margin, params.circle_gamma)
        if params.attribute_weight:
            for field, prototype, field_tokens in zip(inputs.attributes, head.prototypes, tokens):
                t = attribute_targets(field_tokens[chosen], field.vocab)
                known = t.sum(1) > 0
                for h in (a, p):
                    logits = attribute_logits(h[known], prototype, params.temperature)
                    loss = loss + field.weight * F.cross_entropy(logits, t[known])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    head.eval()
    return head
