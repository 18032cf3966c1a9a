"""Image folders ``<category>/<object>/<view>.(jpg|jpeg|png)`` -> the multi-view layout.

Each object becomes an item (its category folder the category path); each image is embedded
with the encoder named (:mod:`~recbole_onevision.preprocess.image_encoder`, EfficientNet-Lite0 by
default), which ``<name>.photos.json`` records with every image's file (search reads both). Which images are *query
photos* and which are *catalogue views* is a documented rule:

* ``query_pattern`` (a regular expression searched in the file name without extension):
  matching images are queries, the rest catalogue views. For ETH-80 (``<object>-<angle>-
  <azimuth>``, the angle measured from the vertical: 000 looks straight down, 090 from the
  side), ``-0(00|22|35|45)-`` makes the 13 shots from above queries;
* otherwise a seeded random ``query_share`` of each object's images are queries.

``view_pattern`` (optional) keeps as catalogue views only the non-query images it matches; the
rest are left out of the dataset (and not embedded), with their count logged. It builds a
sparse catalogue, e.g. ETH-80's four side views ``-090-(000|090|180|270)`` (``eth80-hard``).

Image ids (views' and queries') are ``<object>/<file name without extension>``; files are
taken in natural order (``2.jpg`` before ``10.jpg``). Every object must keep at least one
catalogue view. Queries have no users: each query is
written as its own anonymous session (``user_id`` = ``query_id``) in ``.inter``, with the
photo's rank among its object's query photos as timestamp: with ``image-folder.yaml``'s
time-ordered split, the last viewpoints of every object are held out.
"""
from __future__ import annotations

import json
import logging
import os
import re

import numpy as np

from recbole_onevision.preprocess.atomic import write_atomic_file
from recbole_onevision.io import atomic_open, atomic_write_text

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class ImageFolderError(ValueError):
    """The folder does not have the expected layout; the message names the path."""


def scan(src: str) -> list[tuple[str, str, str]]:
    """Sorted (category, object, path) of every image; anything else in the tree is an error."""
    if not os.path.isdir(src):
        raise FileNotFoundError(f"image folder not found: {src}")
    records = []
    for category, cat_dir in _subfolders(src, "category"):
        for obj, obj_dir in _subfolders(cat_dir, "object"):
            files = sorted((f for f in os.listdir(obj_dir) if not f.startswith(".")), key=natural_key)
            for f in files:
                _check_name(os.path.join(obj_dir, f), f)
                if not f.lower().endswith(IMAGE_EXTENSIONS):
                    raise ImageFolderError(f"{os.path.join(obj_dir, f)}: not an image ({'/'.join(IMAGE_EXTENSIONS)})")
                records.append((category, obj, os.path.join(obj_dir, f)))
            if not files:
                raise ImageFolderError(f"{obj_dir}: no images")
            stems = [os.path.splitext(f)[0] for f in files]
            twins = next(([f for f, t in zip(files, stems) if t == s] for s in stems if stems.count(s) > 1), None)
            if twins:  # a.jpg and a.png would be one image id
                raise ImageFolderError(f"{obj_dir}: {' and '.join(twins)} have the same name without their "
                                       "extension; image ids are <object>/<name>, so rename one")
    if not records:
        raise ImageFolderError(f"{src}: no images found (expected <category>/<object>/<view>.jpg)")
    seen = {}
    for category, obj, _ in records:
        if seen.setdefault(obj, category) != category:
            raise ImageFolderError(f"{src}: object folder name {obj!r} appears under {seen[obj]!r} and {category!r}")
    return records


def natural_key(name: str) -> list:
    """File names in human order: ``view2`` before ``view10`` (numbers compared as numbers), so
    unpadded view numbers order the held-out split as they read."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def image_id(obj: str, path: str) -> str:
    """``<object>/<file name without extension>``: unique in the dataset (object folder names
    are, and names within a folder are), where file names alone (``0.jpg``) are not."""
    return f"{obj}/{os.path.splitext(os.path.basename(path))[0]}"


def _check_name(path: str, name: str) -> None:
    """A name becomes part of an id in a tab-separated UTF-8 file: it must be UTF-8 (a file system
    may hold other bytes) and hold no tab or line break (they would shift the file's columns)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as err:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise ImageFolderError(f"{shown}: the name is not UTF-8 (byte {ord(name[err.start]) - 0xdc00:#04x}); "
                               "rename it") from None
    if any(c in name for c in "\t\r\n"):
        raise ImageFolderError(f"{path!r}: the name holds a tab or line break; rename it")


def _subfolders(path: str, kind: str):
    """(name, path) of ``path``'s entries in name order, hidden ones skipped; each must be a folder."""
    for name in sorted(os.listdir(path)):
        if name.startswith("."):
            continue
        sub = os.path.join(path, name)
        _check_name(sub, name)
        if not os.path.isdir(sub):
            raise ImageFolderError(f"{sub}: expected {'an' if kind[0] in 'aeiou' else 'a'} {kind} folder "
                                   "(<category>/<object>/<view>.jpg)")
        yield name, sub


def _compile(regex: str, option: str) -> re.Pattern:
    try:
        return re.compile(regex)
    except re.error as err:  # re.error is no ValueError: the CLI would print a traceback
        raise ImageFolderError(f"{option} {regex!r}: invalid regular expression ({err})") from None


def _matches(records, regex: str, option: str) -> np.ndarray:
    """Boolean mask of the records whose file name (without extension) contains ``regex``."""
    pattern = _compile(regex, option)
    return np.array([bool(pattern.search(os.path.splitext(os.path.basename(p))[0])) for _, _, p in records])


def choose_queries(records, query_pattern: str | None, query_share: float, seed: int) -> np.ndarray:
    """Boolean mask of query photos, by the rule in the module docstring."""
    if query_pattern is not None:
        is_query = _matches(records, query_pattern, "--query-pattern")
    else:
        if not 0 < query_share < 1:
            raise ValueError(f"query_share must be in (0, 1), got {query_share}")
        rng = np.random.default_rng(seed)
        is_query = np.zeros(len(records), dtype=bool)
        objects = np.array([r[1] for r in records])
        for obj in dict.fromkeys(objects):
            rows = np.flatnonzero(objects == obj)
            n = min(len(rows) - 1, int(round(query_share * len(rows))))
            is_query[rng.choice(rows, size=n, replace=False)] = True
    if not is_query.any():  # no interactions: RecBole would stop at load with "Some feat is empty"
        rule = (f"--query-pattern {query_pattern!r} matches none" if query_pattern is not None else
                f"query_share {query_share} picks none (an object with one image keeps it as its catalogue view)")
        raise ImageFolderError(f"{rule} of the {len(records)} images; the dataset needs query photos")
    for obj in dict.fromkeys(r[1] for r in records):
        if all(is_query[i] for i, r in enumerate(records) if r[1] == obj):
            raise ImageFolderError(f"object {obj!r}: every image was chosen as a query; it needs at least "
                                   "one catalogue view (check the query pattern)")
    return is_query


def choose_views(records, is_query: np.ndarray, view_pattern: str | None) -> np.ndarray:
    """Boolean mask of catalogue views: every non-query image, or those ``view_pattern`` matches."""
    if view_pattern is None:
        return ~is_query
    is_view = ~is_query & _matches(records, view_pattern, "--view-pattern")
    for obj, folder in dict.fromkeys((r[1], os.path.dirname(r[2])) for r in records):
        if not any(is_view[i] for i, r in enumerate(records) if r[1] == obj):
            raise ImageFolderError(f"--view-pattern {view_pattern!r} matches none of the non-query images of "
                                   f"object {obj!r} ({folder}); every object needs a catalogue view")
    return is_view


def write_photo_record(path: str, encoder: dict, root: str, images: dict[str, str]) -> None:
    """``<name>.photos.json``: the encoder that made the embeddings (search embeds new photos
    with the same one and refuses another) and each view's and query's image file, relative to
    ``root``, so search can show catalogue images."""
    record = {"format": 1, "encoder": encoder, "root": os.path.abspath(root),
              "images": {key: os.path.relpath(file, root) for key, file in images.items()}}
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def convert(src: str, out: str, name: str | None = None, query_pattern: str | None = None,
            query_share: float = 0.25, seed: int = 2025, encoder=None, show_progress: bool = True,
            view_pattern: str | None = None) -> str:
    """Write ``out/<name>/`` (default name: the folder's name); returns that folder."""
    from recbole_onevision.preprocess.image_encoder import encoder_from_spec

    for regex, option in ((query_pattern, "--query-pattern"), (view_pattern, "--view-pattern")):
        if regex is not None:
            _compile(regex, option)  # both named before any other check of the images
    records = scan(src)
    is_query = choose_queries(records, query_pattern, query_share, seed)
    is_view = choose_views(records, is_query, view_pattern)
    keep = is_query | is_view
    if not keep.all():  # said aloud, so a too-narrow --view-pattern drops nothing silently
        logger.info("--view-pattern %r: left out %d images that are neither query photos nor catalogue views",
                    view_pattern, int((~keep).sum()))
        records, is_query, is_view = [r for r, k in zip(records, keep) if k], is_query[keep], is_view[keep]
    name = name or os.path.basename(os.path.normpath(src))
    folder = os.path.join(out, name)
    encoder = encoder_from_spec(encoder)
    embeddings = encoder.embed_cached([p for _, _, p in records], os.path.join(folder, ".cache"), show_progress)
    ids = [image_id(obj, p) for _, obj, p in records]
    views = np.flatnonzero(is_view)
    queries = np.flatnonzero(is_query)
    path = lambda ext: os.path.join(folder, f"{name}.{ext}")  # noqa: E731
    objects = dict.fromkeys((r[1], r[0]) for r in records)
    # a category is one token of a space-separated token_seq: "running shoes" would be two
    write_atomic_file(path("item"), ["item_id:token", "category:token_seq"],
                      ((o, [re.sub(r"\s+", "_", c)]) for o, c in objects))
    write_atomic_file(path("view"), ["view_id:token", "item_id:token"],
                      ((ids[i], records[i][1]) for i in views))
    write_atomic_file(path("query"), ["query_id:token", "product_id:token"],
                      ((ids[i], records[i][1]) for i in queries))
    # timestamp = the photo's rank among its object's query photos (file-name order), so a
    # time-ordered split holds out the same viewpoints of every object (image-folder.yaml)
    seen: dict[str, int] = {}
    times = []
    for i in queries:
        times.append(seen.get(records[i][1], 0))
        seen[records[i][1]] = times[-1] + 1
    write_atomic_file(path("inter"), ["user_id:token", "item_id:token", "query_id:token", "timestamp:float"],
                      ((ids[i], records[i][1], ids[i], t) for t, i in zip(times, queries)))
    for ext, rows in (("view.npy", views), ("query.npy", queries)):
        with atomic_open(path(ext), "wb") as f:
            np.save(f, embeddings[rows])
    # names the protocol rather than copying it, so a change to image-folder.yaml reaches
    # folders converted before; run.py --dataset=<name> then needs no --config_files
    atomic_write_text(path("yaml"), "# Written by the image-folder converter: this dataset follows the plugin's "
                      "protocol recbole_onevision/properties/dataset/image-folder.yaml.\n"
                      "# Keys added below override it for this dataset alone.\nprotocol: image-folder\n")
    write_photo_record(path("photos.json"), encoder.describe(), src,
                       {ids[i]: records[i][2] for i in np.concatenate([views, queries])})
    logger.info("%s: %d items, %d catalogue views, %d query photos -> %s", name, len(objects), len(views),
                len(queries), folder)
    return folder
