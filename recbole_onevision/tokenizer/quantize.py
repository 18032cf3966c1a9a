"""Residual k-means levels and the last level that makes every SID distinct."""
from __future__ import annotations

import math

import numpy as np
import torch

from recbole_onevision.tokenizer.kmeans import kmeans, nearest


def auto_codebook_sizes(n_items: int, levels: int) -> list[int]:
    """Power-of-two codebooks of about sqrt(items) codes (16 to 256) on every level.

    Two levels then already come close to one item per path, as with TIGER's 3 x 256 codes for
    12k items: 64 codes for MVShop mini (3k items), 128 for Beauty (12k), 256 for 1M items.
    """
    size = 2 ** math.ceil(math.log2(math.sqrt(max(n_items, 2))))
    return [int(min(256, max(16, size)))] * levels


def residual_kmeans(z: torch.Tensor, sizes: list[int], iters: int, seed: int, sample: int | None):
    """Fit one codebook per level on what the previous levels left; returns
    ``(codebooks, codes (n, levels), residual (n, d))``."""
    residual = z.clone()
    codebooks, codes = [], []
    for level, size in enumerate(sizes):
        centroids, assign = kmeans(residual, size, iters=iters, seed=seed + level, sample=sample)
        codebooks.append(centroids)
        codes.append(assign)
        residual -= centroids[assign]
    return codebooks, torch.stack(codes, 1), residual


def encode_residual(z: torch.Tensor, codebooks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy code of each row of ``z`` under fitted codebooks: ``(codes, residual)``."""
    residual = z.clone()
    codes = []
    for centroids in codebooks:
        assign, _ = nearest(residual, centroids)
        codes.append(assign)
        residual -= centroids[assign]
    return torch.stack(codes, 1), residual


def reconstruct(codes: torch.Tensor, codebooks: list[torch.Tensor]) -> torch.Tensor:
    return sum(c[codes[:, level]] for level, c in enumerate(codebooks))


def uniqueness_level(codes: np.ndarray, residual_norm: np.ndarray) -> np.ndarray:
    """Index within each group of items sharing all codes: 0 for the item its codes fit best
    (smallest residual), then 1, 2, ... (ties by row), so every row's full SID is distinct."""
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.lexsort((np.arange(len(group)), residual_norm, group))
    sorted_group = group[order]
    first = np.r_[True, sorted_group[1:] != sorted_group[:-1]]
    starts = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    index = np.empty(len(group), dtype=np.int64)
    index[order] = np.arange(len(order)) - starts
    return index


def distinct_codes(residual: torch.Tensor, centroids: torch.Tensor, prefix: np.ndarray) -> np.ndarray:
    """Last-level code of each row: its nearest centroid not taken by a closer row sharing its
    ``prefix`` (all earlier codes), so full SIDs are distinct and the code still says where the
    item's residual lies. Rounds: every unplaced row proposes its best free code; per (group,
    code) the closest proposal wins."""
    _, group = np.unique(prefix, axis=0, return_inverse=True)
    group = group.reshape(-1)
    sizes = np.bincount(group)
    if sizes.max() > len(centroids):
        raise ValueError(f"{sizes.max()} items share one SID prefix but the last level has only "
                         f"{len(centroids)} codes; raise vrq_last_codes")
    codes, _ = nearest(residual, centroids)
    codes = codes.numpy()
    shared = np.flatnonzero(sizes[group] > 1)  # rows of groups that must split
    if not len(shared):
        return codes
    dist = (torch.cdist(residual[shared], centroids) ** 2).numpy()
    local = np.unique(group[shared], return_inverse=True)[1].reshape(-1)  # group -> 0..g-1
    taken = np.zeros((local.max() + 1, len(centroids)), dtype=bool)
    todo = np.arange(len(shared))
    while len(todo):
        free = np.where(taken[local[todo]], np.inf, dist[todo])
        choice = free.argmin(1)
        best = free[np.arange(len(todo)), choice]
        order = np.lexsort((todo, best, choice, local[todo]))  # closest first within (group, code)
        first = np.r_[True, (local[todo][order][1:] != local[todo][order][:-1])
                      | (choice[order][1:] != choice[order][:-1])]
        won = todo[order[first]]
        codes[shared[won]] = choice[order[first]]
        taken[local[won], choice[order[first]]] = True
        todo = np.setdiff1d(todo, won, assume_unique=True)
    return codes


def collision_stats(codes: np.ndarray) -> tuple[float, int]:
    """(share of rows whose code tuple is unique, size of the largest group sharing one)."""
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return float((counts == 1).sum() / len(codes)), int(counts.max())
