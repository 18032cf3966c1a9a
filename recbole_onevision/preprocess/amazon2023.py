"""Amazon Reviews 2023 (McAuley Lab) -> the multi-view layout (docs/data.md).

Input, one category's two JSONL files as published:

* item metadata: ``parent_asin``, ``title``, ``categories`` (path, root first), ``store``
  (brand), ``price`` (number or null), ``images`` (catalogue views: ``large`` URL, ``variant``);
* reviews: ``user_id``, ``parent_asin``, ``timestamp`` (ms), ``rating``, ``verified_purchase``,
  ``images`` (the buyers' own photos: the multi-view *queries*).

Output: ``.item`` (category path tokens, brand, price), ``.view`` (one row per catalogue image
with its ``variant`` and URL), ``.inter`` (one row per review: user, item, timestamp, rating,
behaviour ``order`` for verified purchases else ``click``, and the review's first photo as its
``query_id`` where it has one), ``.query`` (product = the reviewed item, with its URL). Extra
photos of one review are counted in the log, not used. With ``embed=True`` the images are
fetched (any URL urllib can open, including ``file://``), cached under ``<out>/<name>/.images``
and embedded into ``.view.npy``/``.query.npy``; without it only URLs are written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import urllib.request

import numpy as np

from recbole_onevision.preprocess.atomic import write_atomic_file
from recbole_onevision.io import atomic_open, utf8_lines

logger = logging.getLogger(__name__)


class Amazon2023Error(ValueError):
    """Malformed input; the message names the file and line."""


def _token(text: str) -> str:
    """A RecBole token: no tabs or spaces (they separate fields and sequence elements)."""
    return re.sub(r"\s+", "_", str(text).strip())


def _read_jsonl(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    for lineno, line in utf8_lines(path, Amazon2023Error):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise Amazon2023Error(f"{path}, line {lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise Amazon2023Error(f"{path}, line {lineno}: expected a JSON object")
        yield lineno, record


def _require(record: dict, field: str, path: str, lineno: int):
    value = record.get(field)
    if value is None or value == "":
        raise Amazon2023Error(f"{path}, line {lineno}: missing {field!r}")
    return value


def _id(record: dict, field: str, path: str, lineno: int) -> str:
    """``record[field]`` as a RecBole token: an id must be a string (or an integer), and not blank."""
    value = _require(record, field, path, lineno)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Amazon2023Error(f"{path}, line {lineno}: {field} must be a string, got {value!r:.80}")
    token = _token(value)
    if not token:
        raise Amazon2023Error(f"{path}, line {lineno}: missing {field!r} (only blanks)")
    return token


def _number(value, field: str, path: str, lineno: int) -> float:
    """A finite JSON number (not true/false, NaN or infinity), else an error naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Amazon2023Error(f"{path}, line {lineno}: {field} {value!r:.80} is not a number")
    return float(value)


def _text(record: dict, field: str, path: str, lineno: int) -> str:
    """An optional string field (absent or null: empty)."""
    value = record.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Amazon2023Error(f"{path}, line {lineno}: {field!r} must be a string, got {value!r:.80}")
    return value


def _url(image: dict, fields: tuple[str, ...], path: str, lineno: int, list_field: str) -> str | None:
    """The first of ``fields`` an image object has: a string without tabs or line breaks (it is
    written into a tab-separated file), else an error naming the field."""
    for field in fields:
        value = image.get(field)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise Amazon2023Error(f"{path}, line {lineno}: {list_field!r}: {field} must be a string, got "
                                  f"{value!r:.80}")
        if any(c in value for c in "\t\r\n"):
            raise Amazon2023Error(f"{path}, line {lineno}: {list_field!r}: {field} {value!r:.80} contains a "
                                  "tab or line break")
        return value
    return None


def _list(record: dict, field: str, path: str, lineno: int, of: type) -> list:
    """``record[field]`` as a list of ``of`` (absent: empty); anything else names the field."""
    value = record.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, of) for v in value):
        kind = {str: "strings", dict: "objects"}[of]
        raise Amazon2023Error(f"{path}, line {lineno}: {field!r} must be a list of {kind}, got {value!r:.80}")
    return value


def read_items(path: str) -> dict[str, dict]:
    items = {}
    for lineno, r in _read_jsonl(path):
        asin = _id(r, "parent_asin", path, lineno)
        if asin in items:
            raise Amazon2023Error(f"{path}, line {lineno}: duplicate parent_asin {asin!r}")
        price = r.get("price")
        if isinstance(price, str):  # published prices are numbers, some scraped ones "$1,299.00"
            try:
                price = float(price.replace("$", "").replace(",", ""))
            except ValueError:
                raise Amazon2023Error(f"{path}, line {lineno}: price {price!r} is not a number") from None
        if price is not None:
            price = _number(price, "price", path, lineno)
        categories = [_token(c) for c in _list(r, "categories", path, lineno, str)]
        images = []
        for img in _list(r, "images", path, lineno, dict):
            url = _url(img, ("large", "hi_res"), path, lineno, "images")
            if url:
                images.append((_token(_text(img, "variant", path, lineno) or "MAIN"), url))
        items[asin] = {
            "path": ["/".join(categories[: d + 1]) for d in range(len(categories))],
            "brand": _token(_text(r, "store", path, lineno)),
            "price": "" if price is None else price,
            "images": images,
        }
    if not items:
        raise Amazon2023Error(f"{path}: no items")
    return items


def read_reviews(path: str, items: dict) -> list[dict]:
    reviews = []
    for lineno, r in _read_jsonl(path):
        asin = _id(r, "parent_asin", path, lineno)
        if asin not in items:
            raise Amazon2023Error(f"{path}, line {lineno}: parent_asin {asin!r} is not in the item metadata")
        timestamp = _number(_require(r, "timestamp", path, lineno), "timestamp", path, lineno)
        photos = [_url(img, ("large_image_url", "medium_image_url"), path, lineno, "images")
                  for img in _list(r, "images", path, lineno, dict)]
        rating = r.get("rating")
        rating = 0.0 if rating is None else _number(rating, "rating", path, lineno)
        verified = r.get("verified_purchase")
        if verified is not None and not isinstance(verified, bool):
            raise Amazon2023Error(f"{path}, line {lineno}: verified_purchase {verified!r:.80} is not true/false")
        reviews.append({
            "user": _id(r, "user_id", path, lineno), "item": asin, "time": timestamp / 1000.0,
            "rating": rating, "verified": bool(verified), "photos": [p for p in photos if p], "line": lineno,
        })
    if not reviews:
        raise Amazon2023Error(f"{path}: no reviews")
    return reviews


def fetch(url: str, cache_dir: str) -> str:
    """The local copy of ``url`` (downloaded once into ``cache_dir``)."""
    name = hashlib.sha256(url.encode()).hexdigest()[:20] + os.path.splitext(url.split("?")[0])[1][:5]
    path = os.path.join(cache_dir, name)
    if not os.path.isfile(path):
        try:
            with urllib.request.urlopen(url, timeout=30) as response, atomic_open(path, "wb") as out:
                out.write(response.read())
        except OSError as err:
            raise OSError(f"could not fetch {url}: {err}") from None
    return path


def convert(meta_path: str, reviews_path: str, out: str, name: str, embed: bool = False, encoder=None) -> str:
    items = read_items(meta_path)
    reviews = read_reviews(reviews_path, items)
    folder = os.path.join(out, name)
    path = lambda ext: os.path.join(folder, f"{name}.{ext}")  # noqa: E731

    views = [(f"{asin}#{k}", asin, variant, url) for asin, item in items.items()
             for k, (variant, url) in enumerate(item["images"])]
    queries, taken = [], {}
    for r in (r for r in reviews if r["photos"]):
        # <user>@<item>@<timestamp>; a review repeating another's three (a duplicated review) gets
        # #2, #3, ...: two query rows with one id would be refused when the dataset is loaded
        query_id = f"{r['user']}@{r['item']}@{int(r['time'] * 1000)}"
        taken[query_id] = taken.get(query_id, 0) + 1
        queries.append((query_id if taken[query_id] == 1 else f"{query_id}#{taken[query_id]}", r["item"],
                        r["photos"][0]))
    repeated = sum(n - 1 for n in taken.values())
    if repeated:
        logger.warning("%s: %d reviews with a photo repeat another's user, item and timestamp; their query ids "
                       "end in #2, #3, ...", reviews_path, repeated)
    extra = sum(max(0, len(r["photos"]) - 1) for r in reviews)
    query_of = iter(q[0] for q in queries)
    write_atomic_file(path("item"), ["item_id:token", "category:token_seq", "brand:token", "price:float"],
                      ((a, it["path"], it["brand"], it["price"]) for a, it in items.items()))
    write_atomic_file(path("view"), ["view_id:token", "item_id:token", "variant:token", "url:token"], views)
    write_atomic_file(path("query"), ["query_id:token", "product_id:token", "url:token"], queries)
    write_atomic_file(path("inter"), ["user_id:token", "item_id:token", "query_id:token", "timestamp:float",
                                      "rating:float", "behaviour:token"],
                      ((r["user"], r["item"], next(query_of) if r["photos"] else "", r["time"], r["rating"],
                        "order" if r["verified"] else "click") for r in reviews))
    logger.info("%s: %d items, %d catalogue images, %d reviews, %d with a photo (query); %d further "
                "review photos not used", name, len(items), len(views), len(reviews), len(queries), extra)
    if embed:
        from recbole_onevision.preprocess.image_encoder import encoder_from_spec
        from recbole_onevision.preprocess.image_folder import write_photo_record

        encoder = encoder_from_spec(encoder)
        cache = os.path.join(folder, ".images")
        files = {}
        for ext, rows, url_col in (("view.npy", views, 3), ("query.npy", queries, 2)):
            local = [fetch(row[url_col], cache) for row in rows]
            files.update((row[0], file) for row, file in zip(rows, local))
            matrix = encoder.embed_cached(local, os.path.join(folder, ".cache")) if local else np.zeros((0, 0))
            with atomic_open(path(ext), "wb") as f:
                np.save(f, matrix.astype(np.float32))
        # the encoder (search embeds new photos with it) and the fetched images (search shows them)
        write_photo_record(path("photos.json"), encoder.describe(), cache, files)
    return folder
