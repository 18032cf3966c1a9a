"""Constrained beam search over the SID trie, with dynamic pruning and the dense head's fusion.

Every level expands each live beam by the codes that continue a real SID (the trie), keeps the
best ``beam_size`` per query, and, with pruning, drops beams more than ``beam_margin``
log-probability behind their row's best (but never its best ``min_beams``, the largest topk, so
a pruned search still returns a full list where the trie has the items); finished (-inf) beams are cut out of the beam set and
absent or pruned encoder tokens out of the memory, so the saved work is real, not masked. The
decoder's keys and values are cached (:class:`DecoderCache`): each step decodes one token per beam.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recbole_onevision.model.decoder_cache import DecoderCache


@dataclass
class DecodeStats:
    """The work one search did (for the pruning benchmark)."""
    rows: int
    memory_tokens: int
    beams_expanded: int = 0


@torch.no_grad()
def beam_search(model, interaction, beam_size: int, prune: bool, fuse_dense: float = 0.0):
    """(items, log-probabilities, stats): items and scores each (batch, beam_size), best first.
    Fewer real SIDs than beams (or beams dropped by pruning) leaves item 0 with score -inf in the
    last columns. ``fuse_dense`` > 0 adds the dense head's top items (:func:`add_dense`)."""
    codes, trie = model.codes, model.trie
    pruning = model.params.prune if prune else None
    margin, keep = (pruning.beam_margin, pruning.min_beams) if prune else (math.inf, 0)
    memory, mask, features = model.encode(interaction, prune=pruning)
    photo = (model.photo_similarity(interaction), features)
    batch, device = memory.shape[0], memory.device
    cache = DecoderCache(model.sid_decoder.decoder, memory, mask)
    last = torch.full((batch, 1), codes.bos_token, device=device)  # each beam's last token
    nodes = torch.zeros(batch, 1, dtype=torch.long, device=device)
    scores = torch.zeros(batch, 1, device=device)
    stats = DecodeStats(rows=batch, memory_tokens=int((~mask).sum()))
    for level in range(codes.levels):
        k, size = last.shape[1], codes.sizes[level]
        scores = scores.contiguous()
        live = torch.nonzero(torch.isfinite(scores).view(-1)).squeeze(1)  # only these are decoded
        stats.beams_expanded += len(live)
        rows = live // k
        states = cache.step(model.sid_decoder.input_dropout(codes.step(last.reshape(-1)[live], level)), live, rows)
        if level == 0:
            first = states  # one per row: what the dense head may read
        child = torch.full((batch * k, size), -1, dtype=torch.long, device=device)
        child[live] = trie.step(level, nodes.view(-1)[live])
        logp = constrained_log_probs(model, states, level, child[live], rows, photo)
        total = torch.full((batch * k, size), float("-inf"), device=device)
        total[live] = scores.view(-1)[live].unsqueeze(1) + logp
        scores, index = total.view(batch, k * size).topk(min(beam_size, k * size), dim=1)
        behind = scores < scores[:, :1] - margin
        behind[:, :keep] = False
        scores = scores.masked_fill(behind, float("-inf"))
        alive = max(int(torch.isfinite(scores).sum(1).max()), 1)  # beams are sorted: a prefix
        scores, index = scores[:, :alive], index[:, :alive]
        parent, code = index // size, index % size
        cache.reorder((parent + k * torch.arange(batch, device=device).unsqueeze(1)).view(-1))
        last = code + codes.offsets[level]
        nodes = child.view(batch, k, size)[torch.arange(batch, device=device).unsqueeze(1), parent, code]
    items = torch.where(torch.isfinite(scores), nodes, torch.zeros_like(nodes))
    if fuse_dense:
        dense = model.dense.state(memory, mask, first)
        items, scores = add_dense(model, memory, mask, photo, dense, items, scores, beam_size, fuse_dense)
    missing = beam_size - items.shape[1]
    if missing > 0:  # keep the documented (batch, beam) shape
        items = F.pad(items, (0, missing))
        scores = F.pad(scores, (0, missing), value=float("-inf"))
    return items, scores, stats


def constrained_log_probs(model, states, level: int, child, rows, photo) -> torch.Tensor:
    """(beams, codes) log-probabilities of level ``level``'s codes for decoder ``states``, over the
    codes that continue a real SID only (``child``: :meth:`SIDTrie.step` rows; others -inf);
    ``rows``: each beam's query row; ``photo``: the rows' (:meth:`OneVision.photo_similarity`,
    photo features), either None without photos."""
    similarity, features = photo
    logits = model.sid_decoder.level_logits(states, level, model.codes)
    if model.inputs.attributes is not None:
        logits = logits + model.inputs.attributes.logits(states, level, child)
    if model.sid_decoder.nodes is not None:
        logits = logits + model.sid_decoder.nodes.logits(states, None if features is None else features[rows],
                                                         level, child)
    if similarity is not None:
        logits = logits + model.visual_bias.of_children(similarity[level], level, child, rows)
    logits = logits.masked_fill(child < 0, -1e9)
    return torch.log_softmax(logits, -1).masked_fill(child < 0, float("-inf"))


def add_dense(model, memory, mask, photo, first, items, scores, beams: int, weight: float):
    """The beams and the dense head's top ``beams`` items (``first``: the rows' dense state),
    each scored by its constrained SID log-probability (as beam search scores it; a beam's score
    is that already) + ``weight`` x its dense log-probability; the best ``beams``, best first."""
    codes, trie = model.codes, model.trie
    dense = model.dense.log_probs(first, model.item_vectors())
    top = dense.topk(min(beams, model.n_items - 1), 1).indices  # (rows, n)
    rows, n = top.shape
    # teacher-force the retrieved items through the decoder cache, n hypotheses per row
    cache = DecoderCache(model.sid_decoder.decoder, memory, mask)
    every_row = torch.arange(rows, device=top.device)
    row = every_row.repeat_interleave(n)
    flat, tokens = top.reshape(-1), codes.item_tokens[top.reshape(-1)]
    # BOS and the first level are the same for a row's n items: decoded and scored once per row
    bos = codes.step(torch.full((rows,), codes.bos_token, device=top.device), 0)
    states = cache.step(model.sid_decoder.input_dropout(bos), every_row, every_row)
    logp = constrained_log_probs(model, states, 0, trie.step(0, torch.zeros_like(every_row)), every_row, photo)
    sid = logp[row, codes.codes(tokens[:, 0], 0)]
    cache.reorder(row)
    for level in range(1, codes.levels):
        inputs = codes.step(tokens[:, level - 1], level)
        states = cache.step(model.sid_decoder.input_dropout(inputs), torch.arange(rows * n, device=top.device), row)
        child = trie.step(level, trie.item_nodes(level - 1)[flat])
        logp = constrained_log_probs(model, states, level, child, row, photo)
        sid = sid + logp.gather(1, codes.codes(tokens[:, level], level).unsqueeze(1)).squeeze(1)
    candidates = torch.cat([items, top], 1)
    total = torch.cat([scores, sid.view(rows, n)], 1) + weight * dense.gather(1, candidates)
    # an item both beamed and retrieved counts once (same score either way, up to rounding)
    ordered, order = candidates.sort(1)
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    total = total.masked_fill(torch.zeros_like(repeat).scatter(1, order, repeat), float("-inf"))
    total, best = total.topk(min(beams, total.shape[1]), 1)
    return torch.where(torch.isfinite(total), candidates.gather(1, best), 0), total


def score_row(items: torch.Tensor, scores: torch.Tensor, n_items: int) -> torch.Tensor:
    """RecBole's full-ranking row: each beam's score on its item, -inf elsewhere and on padding."""
    out = torch.full((len(items), n_items), float("-inf"), device=items.device)
    out.scatter_(1, items, scores)
    out[:, 0] = float("-inf")
    return out
