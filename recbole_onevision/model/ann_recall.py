"""Approximate recall over the catalogue's views (faiss), for MCA and VisualKNN at scale.

``recall_index: exact`` (the default) keeps the exact search of
:class:`~recbole_onevision.model.visual_similarity.ViewTable`. ``hnsw`` or ``ivf`` search an
inner-product faiss index over the L2-normalised views instead: the index returns each photo's
top views, an item's score is its best retrieved view (max over them), and items none of whose
views came back are not recalled (-inf). ``recall_index_params`` tunes the index
(:data:`PARAMS`); both keys are checked by :func:`recall_index_settings`, the one place that
reads them.

How many views to ask for: the items of the exact top ``items`` are the first ``items``
distinct items of the exact view ranking, which are found among its first ``items x (largest
views per item)`` views. The largest can be far above the typical count, so the index is asked
for ``items x ceil(mean views per item) x VIEW_MARGIN`` views: twice what ``items`` items with
a typical number of views each could fill (on MVShop, 3 views per item: 600 views for 100
items, which cover about 290 distinct items on MVShop small). A row whose views cover fewer than
``items`` distinct items recalls fewer (benchmarks/ann_recall.py counts such rows). HNSW's
search list (``ef_search``) is never shorter than the views asked (faiss does not raise it
itself, and a shorter list returns poorer views); by default it is twice as long, which
brought item recall@100 on MVShop small from 0.92 to 0.97 (docs/results/scale.md).

Built once per view matrix and settings: the serialized index is cached in the dataset's
``.cache`` folder, keyed by a hash of the views and the settings, written atomically, so a
second run, or a served run (:mod:`recbole_onevision.search`), loads it instead of building
it again. A cache, not a model buffer: the index is derived from the dataset's views, which the
run reloads anyway; its size depends on the build (an HNSW graph), which a fixed-shape
``state_dict`` entry cannot hold; and checkpoints stay as small as before.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time

import numpy as np
import torch

from recbole_onevision.io import atomic_open

KINDS = ("exact", "hnsw", "ivf")
# each parameter's default; None: ef_search twice the views asked (ViewIndex.views_for),
# nlist from the catalogue's size (_ivf_lists). nprobe 128 suits catalogues of 10^5 views; at
# millions of views recall drops and 256 holds it (docs/results/scale.md)
PARAMS = {"hnsw": {"M": 32, "ef_construction": 80, "ef_search": None},
          "ivf": {"nlist": None, "nprobe": 128}}
SEARCH_TIME = ("ef_search", "nprobe")  # set per search: not part of the built (cached) index
VIEW_MARGIN = 2  # views asked per item: VIEW_MARGIN x the mean views per item
IVF_SEED = 1234  # k-means of the IVF lists: a fixed seed, so a rebuild gives the same index
CACHE_VERSION = 1  # bump when building changes, so old cached indexes are not reused

logger = logging.getLogger(__name__)


def recall_index_settings(config) -> tuple[str, dict]:
    """(kind, parameters with defaults filled in) from ``recall_index`` and
    ``recall_index_params``; a ValueError naming the key for anything else."""
    kind = config["recall_index"] if "recall_index" in config else "exact"
    kind = "exact" if kind is None else kind
    given = config["recall_index_params"] if "recall_index_params" in config else None
    given = {} if given is None else given
    if kind not in KINDS:
        raise ValueError(f"config recall_index: expected one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(given, dict):
        raise ValueError(f"config recall_index_params: expected a mapping, got {given!r}")
    allowed = PARAMS.get(kind, {})
    for name, value in given.items():
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none (exact search has no parameters)"
            raise ValueError(f"config recall_index_params: {name!r} is not a parameter of recall_index {kind} "
                             f"(known: {known})")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config recall_index_params: {name} expected a positive integer, got {value!r}")
    if kind != "exact":
        try:
            import faiss  # noqa: F401
        except ImportError:
            raise ValueError(f"config recall_index: {kind} needs faiss: pip install "
                             "'recbole-onevision[ann]' (faiss-cpu)") from None
    return kind, {**allowed, **given}


def view_index(config, dataset, views: torch.Tensor, n_items: int) -> "ViewIndex | None":
    """The configured index over ``views`` (L2-normalised, one per ``dataset.view_item``),
    cached in ``<dataset folder>/.cache``; None for exact search."""
    kind, params = recall_index_settings(config)
    if kind == "exact":
        return None
    cache = os.path.join(dataset.dataset_path, ".cache") if getattr(dataset, "dataset_path", None) else None
    return ViewIndex(views, dataset.view_item, n_items, kind, params, cache)


def _ivf_lists(n_views: int) -> int:
    """Default IVF lists: about 4 sqrt(views) (faiss's rule of thumb), at most one per 39
    views (fewer training points per list than that and faiss's k-means warns)."""
    return max(1, min(round(4 * math.sqrt(n_views)), n_views // 39))


class ViewIndex:
    """An approximate best-view search over ``views`` (rows L2-normalised), on the CPU."""

    def __init__(self, views: torch.Tensor, view_item: torch.Tensor, n_items: int, kind: str, params: dict,
                 cache_dir: str | None = None):
        import faiss

        self.kind, self.n_items = kind, n_items
        self.params = dict(params)
        units = np.ascontiguousarray(views.detach().cpu().numpy(), dtype=np.float32)
        if kind == "ivf" and self.params["nlist"] is None:
            self.params["nlist"] = _ivf_lists(len(units))
        self.view_item = view_item.detach().cpu()
        counts = torch.bincount(self.view_item, minlength=n_items)
        self.views_per_item = math.ceil(len(units) / max(int((counts > 0).sum()), 1))
        self.build_seconds, self.cached = 0.0, False
        key = self.cache_key(units)
        path = None if cache_dir is None else os.path.join(cache_dir, f"recall-{kind}-{key}.npy")
        self.index = self._load(path, units) if path else None
        if self.index is None:
            start = time.perf_counter()
            self.index = self._build(faiss, units)
            self.build_seconds = time.perf_counter() - start
            logger.info(f"recall index: built {kind} {self.params} over {len(units)} views "
                        f"in {self.build_seconds:.1f}s")
            if path:
                self._save(path)

    def cache_key(self, units: np.ndarray) -> str:
        import faiss

        digest = hashlib.sha256(units.tobytes())
        built = sorted((k, v) for k, v in self.params.items() if k not in SEARCH_TIME)
        settings = f"{CACHE_VERSION}/{faiss.__version__}/{self.kind}/{built}/{units.shape}"
        digest.update(settings.encode())
        return digest.hexdigest()[:20]

    def _build(self, faiss, units: np.ndarray):
        d = units.shape[1]
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.params["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.params["ef_construction"]
            # one thread: parallel insertion links the graph in whatever order threads reach
            # it, so the same views could give another graph (and other results) each build
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                index.add(units)
            finally:
                faiss.omp_set_num_threads(threads)
            return index
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, self.params["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = IVF_SEED
        index.cp.spherical = True  # unit vectors: centroids on the sphere, assigned by inner product
        index.train(units)
        index.add(units)
        return index

    def _load(self, path: str, units: np.ndarray):
        import faiss

        if not os.path.isfile(path):
            return None
        try:
            index = faiss.deserialize_index(np.load(path, allow_pickle=False))
        except (OSError, ValueError, RuntimeError) as err:
            logger.warning(f"recall index: cached {path} is unreadable ({err}); building it again")
            return None
        if index.ntotal != len(units) or index.d != units.shape[1]:
            logger.warning(f"recall index: cached {path} holds {index.ntotal} views of width {index.d}, "
                           f"not {len(units)} of {units.shape[1]}; building it again")
            return None
        self.cached = True
        logger.info(f"recall index: loaded {self.kind} over {index.ntotal} views from {path}")
        return index

    def _save(self, path: str) -> None:
        import faiss

        try:
            with atomic_open(path, "wb") as f:
                np.save(f, faiss.serialize_index(self.index), allow_pickle=False)
        except OSError as err:  # a read-only dataset folder: the run goes on, the next builds again
            logger.warning(f"recall index: could not cache it at {path} ({err})")
            return
        logger.info(f"recall index: cached at {path}")

    def views_for(self, items: int) -> int:
        """Views asked of the index to recall ``items`` items (module docstring)."""
        return min(self.index.ntotal, items * self.views_per_item * VIEW_MARGIN)

    def search_views(self, photos: torch.Tensor, items: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, views) inner products and view ids, best first (id -1: none found)."""
        import faiss

        units = np.ascontiguousarray(photos.detach().cpu().numpy(), dtype=np.float32)
        k = self.views_for(items)
        # search-time settings per call (not set on the index): a cached index serves any of them
        if self.kind == "ivf":
            probes = min(self.params["nprobe"], self.params["nlist"])
            return self.index.search(units, k, params=faiss.SearchParametersIVF(nprobe=probes))
        ef = max(k, self.params["ef_search"] or 2 * k)
        return self.index.search(units, k, params=faiss.SearchParametersHNSW(efSearch=ef))

    @torch.no_grad()
    def __call__(self, photos: torch.Tensor, items: int) -> torch.Tensor:
        """(rows, n_items) each item's best retrieved view's cosine, -inf for items not retrieved
        (rows of ``photos`` L2-normalised). At least ``items`` items are finite where the
        retrieved views cover that many."""
        similarity, ids = self.search_views(photos, items)
        ids = torch.from_numpy(ids)
        found = ids >= 0
        item = torch.where(found, self.view_item[ids.clamp_min(0)], 0)
        value = torch.from_numpy(similarity).masked_fill(~found, float("-inf"))
        scores = torch.full((len(photos), self.n_items), float("-inf"))
        scores.scatter_reduce_(1, item, value, "amax")
        return scores.to(photos.device)

    def memory_bytes(self) -> int:
        """Size of the serialized index: the views it stores plus its graph or lists."""
        import faiss

        return int(faiss.serialize_index(self.index).nbytes)
