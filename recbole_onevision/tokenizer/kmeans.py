"""Seeded k-means in torch: k-means++ on a sample, Lloyd iterations, chunked assignment.

Chunking keeps memory at O(chunk x k) beyond the data itself, so a 1M-item catalogue
quantizes on a laptop; the same code runs on a GPU when the tensors live there.
"""
from __future__ import annotations

import torch


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centroid of every row of ``x`` and the squared distance to it."""
    c_sq = (centroids * centroids).sum(1)
    index = torch.empty(len(x), dtype=torch.long, device=x.device)
    dist = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk]
        d = (block * block).sum(1, keepdim=True) - 2 * block @ centroids.T + c_sq
        best, arg = d.min(1)
        index[start:start + chunk], dist[start:start + chunk] = arg, best.clamp_min_(0)
    return index, dist


def kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii): each next centre drawn by squared distance.

    Distances as |x|^2 - 2 x.c + |c|^2 from precomputed row norms: one matrix-vector product per
    centre instead of a pass that materialises ``x - c``, the seeding's whole cost at scale."""
    x_sq = (x * x).sum(1)
    first = torch.randint(len(x), (1,), generator=generator).item()
    centroids = [x[first]]
    dist = (x_sq - 2 * (x @ x[first]) + x_sq[first]).clamp_min_(0)
    for _ in range(1, k):
        total = dist.sum()
        if total <= 0:  # fewer distinct points than k: repeat one (left empty, then reseeded)
            pick = torch.randint(len(x), (1,), generator=generator).item()
        else:
            pick = torch.multinomial(dist / total, 1, generator=generator).item()
        centroids.append(x[pick])
        dist = torch.minimum(dist, (x_sq - 2 * (x @ x[pick]) + x_sq[pick]).clamp_min_(0))
    return torch.stack(centroids)


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0, sample: int | None = 200_000,
           tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of ``x`` into ``k`` groups; returns ``(centroids (k, d), assignment (n,))``.

    Centroids are fitted on at most ``sample`` rows drawn with ``seed`` (all rows when
    ``sample`` is None), then every row is assigned. Empty clusters are reseeded with the
    points farthest from their centre, so all ``k`` codes stay in use where the data allow.
    """
    if k < 1 or len(x) == 0:
        raise ValueError(f"k-means needs k >= 1 and data, got k={k} and {len(x)} rows")
    generator = torch.Generator().manual_seed(seed)
    fit = x
    if sample is not None and len(x) > sample:
        fit = x[torch.randperm(len(x), generator=generator)[:sample].to(x.device)]
    k = min(k, len(fit))
    centroids = kmeans_pp(fit, k, generator)
    previous = None
    for _ in range(iters):
        assign, dist = nearest(fit, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, fit)
        counts = torch.bincount(assign, minlength=k).to(fit.dtype)
        empty = torch.nonzero(counts == 0).flatten()
        centroids = sums / counts.clamp_min(1).unsqueeze(1)
        if len(empty):
            far = torch.argsort(dist, descending=True)[:len(empty)]
            centroids[empty[:len(far)]] = fit[far]
        inertia = dist.sum().item()
        if previous is not None and abs(previous - inertia) <= tol * max(previous, 1e-12) and not len(empty):
            break
        previous = inertia
    assign, _ = nearest(x, centroids)
    return centroids, assign
