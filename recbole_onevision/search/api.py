"""Photo in, products out: one interface over every trained run (OneVision, MCA, VisualKNN).

``Searcher.from_checkpoint(path).search(photo=..., user=..., k=10)`` embeds the photo with
the encoder that made the dataset's embeddings (or takes a precomputed embedding), builds the
row the model would see in RecBole's evaluator (the photo as query, the user's profile and
latest history), ranks with the model's own ``full_sort_predict`` (or ``full_sort_topk``,
as the evaluator does: :mod:`recbole_onevision.topk`) and returns the top k. So search
and evaluation rank the same way; :meth:`Searcher.search_batch` answers many queries with one
model call (what the service's micro-batching uses).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from recbole_onevision.preprocess.image_encoder import ImageError, encoder_from_spec, open_image, same_encoder
from recbole_onevision.search.errors import SearchError
from recbole_onevision.search.history import UserHistories
from recbole_onevision.search.run import LoadedRun, load_run
from recbole_onevision.topk import ranked_lists

MAX_K = 100
MAX_PIXELS = 40_000_000  # decoded size a photo may have (a decompression bomb is refused)


@dataclass
class Query:
    """One search. ``image`` (encoded bytes or a file path) or ``embedding`` (the dataset's
    width); ``user`` an id of the dataset (its profile and history are used); ``history`` item
    ids, oldest first, used instead of the user's own (optionally with ``behaviours``)."""
    image: bytes | str | None = None
    embedding: list[float] | np.ndarray | None = None
    user: str | None = None
    history: list[str] | None = None
    behaviours: list[str] | None = None
    k: int = 10


@dataclass
class Hit:
    rank: int
    item: str
    score: float
    sid: list[int] | None
    category: str
    images: list[str] = field(default_factory=list)  # image ids of the item's catalogue views


@dataclass
class Answer:
    hits: list[Hit]
    personalised: bool  # False: photo-only search (no known user, no history given)
    user_known: bool
    note: str = ""


def _said(description: dict) -> str:
    rest = ", ".join(f"{k} {v}" for k, v in description.items() if k != "encoder")
    return repr(description.get("encoder")) + (f" ({rest})" if rest else "")


class Searcher:
    def __init__(self, run: LoadedRun, encoder: str | None = None, encoder_weights: str | None = None):
        self.run = run
        self.model, self.dataset, self.catalogue = run.model, run.dataset, run.catalogue
        if not hasattr(self.model, "use_query_photos"):
            raise SearchError(f"{run.config['model']} takes no query photo; search serves OneVision, MCA and "
                              "VisualKNN runs")
        photos = getattr(self.dataset, "query_embedding", None)
        if photos is None:
            raise SearchError(f"dataset {run.config['dataset']} has no query photos")
        self.width = int(photos.shape[1])
        self.histories = UserHistories(run.config, self.dataset)
        self._encoder_spec = self._check_encoder(encoder, encoder_weights)
        self._encoder_weights = encoder_weights  # default: the weights file the dataset records
        self._encoder = None
        self._lock = threading.Lock()  # the model's photo table is swapped per call
        if encoder_weights:
            self.encoder()  # weights named here are checked now

    @classmethod
    def from_checkpoint(cls, checkpoint: str, overrides: dict | None = None, encoder: str | None = None,
                        encoder_weights: str | None = None):
        return cls(load_run(checkpoint, overrides), encoder, encoder_weights)

    @property
    def accepts_images(self) -> bool:
        return self._encoder_spec is not None

    def _check_encoder(self, asked: str | None, weights: str | None = None) -> str | None:
        recorded = self.catalogue.encoder
        if recorded is None:
            if asked or weights:
                raise SearchError(f"dataset {self.run.config['dataset']} records no image encoder (its embeddings "
                                  "were not made from images by the converter): it is searched with embeddings only")
            return None
        if asked and asked != recorded.get("encoder"):
            raise SearchError(f"encoder {asked!r}: dataset {self.run.config['dataset']} was embedded with "
                              f"{recorded.get('encoder')!r}; photos must be embedded by the same encoder")
        return recorded["encoder"]

    def encoder(self):
        """The dataset's encoder, built on first use (a named model's weights from ``encoder_weights``
        or the file the dataset records) and checked against the record: same model, same weights."""
        if self._encoder is None:
            recorded = self.catalogue.encoder
            try:
                encoder = encoder_from_spec(self._encoder_spec, self._encoder_weights or recorded.get("weights"))
            except (ImportError, OSError, ValueError) as err:
                raise SearchError(f"the image encoder of dataset {self.run.config['dataset']}: {err}", 500) from None
            if "image_size" in recorded:
                encoder.image_size = int(recorded["image_size"])
            if not same_encoder(encoder.describe(), recorded):
                raise SearchError(f"encoder {_said(encoder.describe())} differs from the one dataset "
                                  f"{self.run.config['dataset']} was embedded with, {_said(recorded)}: photos must be "
                                  "embedded by the same model with the same weights")
            self._encoder = encoder
        return self._encoder

    # ----- queries ----------------------------------------------------------------------------
    def search(self, image=None, embedding=None, user=None, history=None, behaviours=None, k: int = 10) -> Answer:
        return self.search_batch([Query(image, embedding, user, history, behaviours, k)])[0]

    def search_batch(self, queries: list[Query]) -> list[Answer]:
        """Every query checked first (a :class:`SearchError` names the first bad one), then one
        model call for all of them."""
        for n, query in enumerate(queries):
            self.check(query, f"query {n}: " if len(queries) > 1 else "")
        photos = self._photos(queries)
        rows = [self.histories.row(q.user, q.history, q.behaviours) for q in queries]
        interaction = self.histories.interaction(rows, self.run.config["device"])
        with self._lock, torch.no_grad():
            self.model.use_query_photos(torch.cat([torch.zeros(1, self.width), photos]))
            lists = ranked_lists(self.model, interaction, self.model.n_items, max(q.k for q in queries))
        values, items = lists.scores.float().cpu(), lists.items.cpu()
        return [self._answer(q, row, values[n], items[n]) for n, (q, row) in enumerate(zip(queries, rows))]

    def check(self, query: Query, where: str = "") -> None:
        """Raise :class:`SearchError` naming the first thing wrong with ``query`` (its image is
        decoded only when searched)."""
        if not isinstance(query.k, int) or isinstance(query.k, bool) or not 1 <= query.k <= MAX_K:
            raise SearchError(f"{where}k: expected an integer from 1 to {MAX_K}, got {query.k!r}", 422)
        if (query.image is None) == (query.embedding is None):
            raise SearchError(f"{where}expected exactly one of an image and an embedding", 422)
        if query.image is not None and not self.accepts_images:
            raise SearchError(f"{where}dataset {self.run.config['dataset']} has no image encoder recorded: send "
                              f"an embedding of width {self.width}", 422)
        if query.embedding is not None:
            vector = np.asarray(query.embedding, dtype=object)
            if vector.ndim != 1 or len(vector) != self.width:
                raise SearchError(f"{where}embedding: expected {self.width} numbers, got "
                                  f"{len(vector) if vector.ndim == 1 else 'shape ' + str(vector.shape)}", 422)
            if not all(isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
                       and math.isfinite(v) for v in vector):
                raise SearchError(f"{where}embedding: expected finite numbers (no NaN, infinity or text)", 422)
            if not np.any(np.asarray(vector, dtype=np.float64)):
                raise SearchError(f"{where}embedding: all zeros (it has no direction to search by)", 422)
        self.histories.check(query.user, query.history, query.behaviours, where)

    def _photos(self, queries: list[Query]) -> torch.Tensor:
        out = torch.zeros(len(queries), self.width)
        images = [n for n, q in enumerate(queries) if q.image is not None]
        for n, q in enumerate(queries):
            if q.embedding is not None:
                out[n] = torch.as_tensor(np.asarray(q.embedding, dtype=np.float32))
        if images:
            try:
                pictures = [open_image(queries[n].image, "image" if isinstance(queries[n].image, bytes) else None,
                                       MAX_PIXELS) for n in images]
            except ImageError as err:
                raise SearchError(str(err), 422) from None
            embedded = torch.as_tensor(self.encoder().embed_images(pictures))
            if embedded.shape[1] != self.width:
                raise SearchError(f"the encoder gives {embedded.shape[1]}-d embeddings, the dataset's are "
                                  f"{self.width}-d", 500)
            out[images] = embedded
        return out

    def _answer(self, query: Query, row, values: torch.Tensor, items: torch.Tensor) -> Answer:
        hits = []
        for value, item in zip(values.tolist()[:query.k], items.tolist()[:query.k]):
            if not math.isfinite(value):
                break  # the model retrieved fewer items (e.g. OneVision's beams)
            hits.append(self.hit(len(hits) + 1, item, value))
        note = "" if len(hits) == query.k else f"the model retrieved {len(hits)} items"
        if query.user is not None and not row.user_known:
            note = "; ".join(filter(None, [f"user {query.user!r} is not in the dataset: photo-only search", note]))
        return Answer(hits, row.personalised, row.user_known, note)

    def hit(self, rank: int, item: int, score: float) -> Hit:
        catalogue = self.catalogue
        sid = catalogue.sids[item].tolist() if catalogue.sids is not None else None
        return Hit(rank, str(catalogue.tokens[item]), float(score), sid, catalogue.categories[item],
                   list(catalogue.item_images[item]))

    def examples(self, n: int) -> list[dict]:
        """Up to ``n`` of the dataset's query photos that have an image file, spread over the
        catalogue: {query, product, image}."""
        field = self.histories.query_field
        tokens = self.dataset.field2id_token[field]
        product = self.dataset.query_product.tolist()
        shown = [q for q in range(1, len(tokens)) if str(tokens[q]) in self.catalogue.images]
        step = max(len(shown) // n, 1)
        return [{"query": str(tokens[q]), "product": str(self.catalogue.tokens[product[q]]) if product[q] else None,
                 "image": str(tokens[q])} for q in shown[::step][:n]]

    def query_photo(self, token: str) -> np.ndarray:
        """The embedding of one of the dataset's query photos, by its id."""
        internal = self.dataset.field2token_id[self.histories.query_field].get(token, 0)
        if not internal:
            tokens = self.dataset.field2id_token[self.histories.query_field]
            example = f" (its query photo ids look like {str(tokens[1])!r})" if len(tokens) > 1 else ""
            raise SearchError(f"query photo {token!r} is not in the dataset{example}", 404)
        return self.dataset.query_embedding[internal].numpy()

    def item(self, token: str) -> Hit:
        """Catalogue entry of one item id (score 0, rank 0); :class:`SearchError` 404 if unknown."""
        internal = self.dataset.field2token_id[self.dataset.iid_field].get(token)
        if internal is None or internal == 0:
            raise SearchError(f"item {token!r} is not in the catalogue", 404)
        return self.hit(0, internal, 0.0)
