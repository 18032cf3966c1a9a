"""VRQ: vision-aligned residual quantization (OneVision, arXiv 2510.05759, Sec. VRQ).

Fit (training split only):

1. *Alignment* (``vrq_align``): an MLP head over image embeddings, trained on multi-view
   positive pairs with InfoNCE + circle loss, and attribute prototypes (category level,
   brand, price bucket) the head learns to predict (:mod:`.align`).
2. *Fused item feature*: ``[mean aligned view ; vrq_attribute_weight x sum_f w_f P_f[token_f]]``,
   the attribute part weighting category level 1 most (``vrq_attribute_decay``), so shallow
   codes follow the category tree. Without views (Beauty) the first part is a collaborative
   embedding (SVD of training interactions, ``vrq_collaborative``) and the prototypes are fixed
   seeded random vectors: SIDs from attributes and co-occurrence.
3. *Quantization*: residual k-means, ``vrq_levels`` codebooks; then a last level that makes
   each item's SID distinct: a counter inside each group sharing all codes (``vrq_last_codes:
   0``), or codes that carry content, a codebook on the remaining residual with each item taking
   the nearest code no closer item of its prefix group holds.
4. *Code training* (``vrq_code_steps`` > 0): codebooks fine-tuned so that each item's quantized
   vector is retrieved by its own photos and views (:mod:`.code_training`).

A query photo goes through the same head; its attribute part is the prototypes weighted by the
head's predicted distribution; greedy residual coding gives its predicted SID prefix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

from recbole_onevision.io import atomic_open
from recbole_onevision.tokenizer.align import AlignmentHead, attribute_logits, train_head
from recbole_onevision.tokenizer.code_training import train_codebooks
from recbole_onevision.tokenizer.inputs import TokenizerInputs
from recbole_onevision.tokenizer.kmeans import kmeans
from recbole_onevision.tokenizer.params import VRQParams
from recbole_onevision.tokenizer.quantize import (
    auto_codebook_sizes,
    collision_stats,
    distinct_codes,
    encode_residual,
    residual_kmeans,
    uniqueness_level,
)

logger = logging.getLogger(__name__)
CACHE_VERSION = 4  # bump when fitting changes, so old caches are not reused


class VRQTokenizer:
    """Fits (or reloads) SIDs for a dataset; encodes query photos to SID prefixes."""

    name = "VRQ"

    def __init__(self, params: VRQParams):
        self.params = params
        self.head: AlignmentHead | None = None
        self.prototypes: list[torch.Tensor] = []  # unit rows, one matrix per attribute field
        self.field_weights: list[float] = []
        self.codebooks: list[torch.Tensor] = []
        self.item_sid: torch.Tensor | None = None  # (item_num, levels + 1), row 0 = -1
        self.visual_width = 0  # width of the visual part of the fused feature

    # ----- fitting -------------------------------------------------------------------------
    def cache_key(self, inputs: TokenizerInputs) -> str:
        config = json.dumps(dataclasses.asdict(self.params), sort_keys=True)
        data = inputs.digest(self.params.collaborative and not inputs.has_views)
        return hashlib.sha256(f"{self.name}/{CACHE_VERSION}/{config}/{data}".encode()).hexdigest()[:20]

    def fit(self, inputs: TokenizerInputs, show_progress: bool = False) -> "VRQTokenizer":
        p = self.params
        self.quantize(self.fit_features(inputs, show_progress), inputs.item_num)
        if p.code_steps and inputs.has_views:  # needs photos or views to retrieve from
            with torch.random.fork_rng(devices=[]):
                train_codebooks(self, inputs, self.item_sid.numpy()[:, :len(self.codebooks)], p.code_steps, p.seed,
                                show_progress)
        return self

    def fit_features(self, inputs: TokenizerInputs, show_progress: bool = False) -> torch.Tensor:
        """Fit the alignment head and prototypes; returns the fused feature of every catalogue
        item, ``(item_num - 1, width)`` (RecBole's padding row 0 left out)."""
        p = self.params
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(p.seed)
            visual = self._fit_visual(inputs, show_progress)
            self._fit_prototypes(inputs, visual)
            fused = self._fuse(visual, self._item_attributes(inputs), inputs.item_num)
        rows = fused[1:]
        if rows.shape[1] == 0:
            raise ValueError("VRQ has nothing to tokenize: the dataset has no catalogue views, no item "
                             "attributes (vrq_attribute_fields) and vrq_collaborative is off")
        return rows

    def quantize(self, rows: torch.Tensor, item_num: int) -> None:
        """Residual k-means codebooks over the fused ``rows`` and every item's distinct SID."""
        p = self.params
        sizes = list(p.codebook_sizes or auto_codebook_sizes(len(rows), p.levels))
        self.codebooks, codes, residual = residual_kmeans(rows, sizes, p.kmeans_iters, p.seed, p.kmeans_sample)
        sid = np.full((item_num, p.levels + 1), -1, dtype=np.int64)
        sid[1:, :-1] = codes.numpy()
        if p.last_codes == 0:
            sid[1:, -1] = uniqueness_level(codes.numpy(), residual.norm(dim=1).numpy())
        else:
            largest = collision_stats(codes.numpy())[1]
            size = max(p.last_codes or 4 * sizes[-1], largest)
            last, _ = kmeans(residual, size, p.kmeans_iters, p.seed + p.levels, p.kmeans_sample)
            sid[1:, -1] = distinct_codes(residual, last, codes.numpy())
            self.codebooks.append(last)
        self.item_sid = torch.from_numpy(sid)

    def _fit_visual(self, inputs: TokenizerInputs, show_progress: bool) -> torch.Tensor | None:
        """(item_num, width) unit rows from the views (aligned or raw), or collaborative ones."""
        p = self.params
        if inputs.has_views:
            if p.align:
                self.head = train_head(inputs, p, show_progress)
            return self._view_means(inputs)
        if p.collaborative and len(inputs.train_items):
            return _collaborative_embedding(inputs, p.dim, p.seed)
        return None

    def _view_means(self, inputs: TokenizerInputs) -> torch.Tensor:
        view_feature = self.visual(torch.from_numpy(inputs.view_embedding))
        total = torch.zeros(inputs.item_num, view_feature.shape[1])
        total.index_add_(0, torch.from_numpy(inputs.view_item), view_feature)
        return F.normalize(total, dim=1)  # items without views stay at zero

    def catalogue_features(self, inputs: TokenizerInputs) -> torch.Tensor:
        """(item_num, width) a fitted tokenizer's fused feature of every item (row 0: padding):
        the unquantized vectors its codes approximate. Needs catalogue views."""
        return self._fuse(self._view_means(inputs), self._item_attributes(inputs), inputs.item_num)

    def _fit_prototypes(self, inputs: TokenizerInputs, visual: torch.Tensor | None) -> None:
        self.field_weights = [f.weight for f in inputs.attributes]
        if self.head is not None:  # learned with the head
            self.prototypes = [F.normalize(proto.detach(), dim=1) for proto in self.head.prototypes]
        elif visual is not None and inputs.has_views:  # raw views: class means, so queries can predict
            self.prototypes = [F.normalize(_class_means(f.tokens, f.vocab, visual), dim=1) for f in inputs.attributes]
        else:  # nothing visual to predict from: fixed random directions
            self.prototypes = [F.normalize(torch.randn(f.vocab, self.params.dim), dim=1) for f in inputs.attributes]

    def _item_attributes(self, inputs: TokenizerInputs) -> torch.Tensor | None:
        if not inputs.attributes or not self.params.attribute_weight:
            return None
        total = 0
        for field, proto, weight in zip(inputs.attributes, self.prototypes, self.field_weights):
            tokens = torch.from_numpy(field.tokens)
            present = (tokens > 0).float()
            vectors = proto[tokens] * present.unsqueeze(-1)
            total = total + weight * vectors.sum(1) / present.sum(1, keepdim=True).clamp_min(1)
        return total

    def _fuse(self, visual, attributes, item_num: int) -> torch.Tensor:
        self.visual_width = 0 if visual is None else visual.shape[1]
        parts = [t for t in (visual, None if attributes is None else self.params.attribute_weight * attributes)
                 if t is not None]
        return torch.cat(parts, 1) if parts else torch.zeros(item_num, 0)

    # ----- encoding --------------------------------------------------------------------------
    def visual(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Image embeddings -> the visual part of the fused space (aligned or raw, unit rows)."""
        if self.head is None:
            return F.normalize(embeddings.float(), dim=1)
        with torch.no_grad():
            return torch.cat([self.head(chunk) for chunk in embeddings.float().split(65536)])

    def query_features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Query photos in the fused item space (attribute part: predicted prototypes)."""
        if self.visual_width == 0:
            raise ValueError("this tokenizer was fitted without images; it cannot encode query photos")
        return self.fuse_query(self.visual(embeddings))

    def fuse_query(self, visual: torch.Tensor) -> torch.Tensor:
        """The visual part of query photos -> the fused space (differentiable in ``visual``)."""
        if not self.params.attribute_weight or not self.prototypes:
            return visual
        attributes = 0
        for proto, weight in zip(self.prototypes, self.field_weights):
            probs = torch.softmax(attribute_logits(visual, proto, self.params.temperature), dim=1)
            attributes = attributes + weight * probs @ proto
        return torch.cat([visual, self.params.attribute_weight * attributes], 1)

    def encode_queries(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Predicted SID prefix (``vrq_levels`` codes) of each query photo."""
        codes, _ = encode_residual(self.query_features(embeddings), self.codebooks[:self.params.levels])
        return codes

    @property
    def codebook_sizes(self) -> list[int]:
        """Codes per level, the last (distinct) level last."""
        if len(self.codebooks) > self.params.levels:
            return [len(c) for c in self.codebooks]
        return [len(c) for c in self.codebooks] + [int(self.item_sid[1:, -1].max()) + 1]

    def summary(self) -> str:
        codes = self.item_sid[1:, :-1].numpy()
        icr, largest = collision_stats(codes)
        last = "a counter" if len(self.codebooks) == self.params.levels else "content codes"
        return (f"{len(codes)} items, codebooks {self.codebook_sizes}; unique before the last level "
                f"({last}) {icr:.1%}, largest shared prefix group {largest}")

    # ----- cache -----------------------------------------------------------------------------
    def save(self, path: str, key: str) -> None:
        arrays = {"sid": self.item_sid.numpy(), "field_weights": np.array(self.field_weights, dtype=np.float64),
                  "meta": np.array(json.dumps({"key": key, "visual_width": self.visual_width,
                                               "head": self.head is not None,
                                               "params": dataclasses.asdict(self.params)}))}
        arrays.update({f"codebook{i}": c.numpy() for i, c in enumerate(self.codebooks)})
        arrays.update({f"prototype{i}": p.numpy() for i, p in enumerate(self.prototypes)})
        if self.head is not None:
            arrays.update({f"head.{k}": v.numpy() for k, v in self.head.state_dict().items()})
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with atomic_open(path, "wb") as f:
            np.savez(f, **arrays)

    def load(self, path: str, key: str, inputs: TokenizerInputs) -> "VRQTokenizer":
        """Restore a cached fit, checking it belongs to this config and data."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            meta = json.loads(str(arrays["meta"]))
            sid = arrays["sid"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # .npz is a zip archive
            raise ValueError(f"VRQ cache {path} is unreadable ({type(err).__name__}: {err}); delete it to refit") from None
        try:
            return self._restore(path, key, inputs, arrays, meta, sid)
        except (KeyError, ValueError, RuntimeError, AttributeError, TypeError) as err:
            if isinstance(err, ValueError) and str(err).startswith("VRQ cache"):
                raise
            raise ValueError(f"VRQ cache {path} is incomplete ({type(err).__name__}: {err}); delete it to refit") from None

    def _restore(self, path: str, key: str, inputs: TokenizerInputs, arrays: dict, meta: dict, sid: np.ndarray):
        p = self.params
        if meta.get("key") != key or sid.shape != (inputs.item_num, p.levels + 1):
            raise ValueError(f"VRQ cache {path} does not match this config/dataset (key {meta.get('key')}, "
                             f"SIDs {sid.shape}); delete it to refit")
        if collision_stats(sid[1:])[0] != 1.0:
            raise ValueError(f"VRQ cache {path} has SIDs that are not unique; delete it to refit")
        self.item_sid = torch.from_numpy(sid)
        self.field_weights = arrays["field_weights"].tolist()
        self.visual_width = meta["visual_width"]
        self.codebooks = [torch.from_numpy(arrays[f"codebook{i}"]) for i in range(p.levels + 1)
                          if f"codebook{i}" in arrays]
        self.prototypes = [torch.from_numpy(arrays[f"prototype{i}"]) for i in range(len(self.field_weights))]
        if meta["head"]:
            state = {k[5:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("head.")}
            self.head = AlignmentHead(state["shortcut.weight"].shape[1], p.hidden, p.dim,
                                      [len(t) for t in self.prototypes])
            self.head.load_state_dict(state)
            self.head.eval()
        return self

    def fit_or_load(self, inputs: TokenizerInputs, cache_dir: str | None, show_progress: bool = False):
        """Reuse ``<cache_dir>/vrq-<key>.npz`` when it exists, else fit on the inputs and save."""
        key = self.cache_key(inputs)
        path = None if cache_dir is None else os.path.join(cache_dir, f"vrq-{key}.npz")
        if path and os.path.isfile(path):
            self.load(path, key, inputs)
            logger.info(f"VRQ: reloaded SIDs from {path}: {self.summary()}")
            return self
        start = time.time()
        logger.info(f"VRQ: fitting on the training split ({len(inputs.train_queries)} query photos, "
                    f"{0 if inputs.view_item is None else len(inputs.view_item)} catalogue views, "
                    f"{len(inputs.attributes)} attribute fields)")
        self.fit(inputs, show_progress)
        logger.info(f"VRQ: fitted in {time.time() - start:.1f}s: {self.summary()}")
        if path:
            self.save(path, key)
            logger.info(f"VRQ: cached at {path}")
        return self


def _class_means(tokens: np.ndarray, vocab: int, features: torch.Tensor) -> torch.Tensor:
    sums = torch.zeros(vocab, features.shape[1])
    t = torch.from_numpy(tokens)
    for column in range(t.shape[1]):
        sums.index_add_(0, t[:, column], features)
    sums[0] = 0
    return sums


def _collaborative_embedding(inputs: TokenizerInputs, dim: int, seed: int) -> torch.Tensor:
    """Item factors of the training user-item matrix (truncated SVD), unit rows."""
    from scipy.sparse import csr_matrix
    from sklearn.utils.extmath import randomized_svd

    matrix = csr_matrix((np.ones(len(inputs.train_items), dtype=np.float32),
                         (inputs.train_users, inputs.train_items)), shape=(inputs.user_num, inputs.item_num))
    dim = min(dim, min(matrix.shape) - 1)
    _, s, vt = randomized_svd(matrix, dim, random_state=seed)
    return F.normalize(torch.from_numpy((vt.T * np.sqrt(s)).astype(np.float32)), dim=1)
