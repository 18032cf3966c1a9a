"""A user sample of an MVShop dataset: the whole catalogue, the sessions of some users.

Training and evaluating on every user of MVShop large (100,000 users, 1.5M sessions) does not
fit a CPU session; a sample of its users keeps the catalogue (1M items, 3M views) that the scale
questions are about while cutting the sessions. Items, views and their embeddings are linked
(or copied) unchanged; ``.user``, ``.inter`` and ``.query`` (+ ``.query.npy``) keep the rows of
the sampled users, in their original order. The protocol (``<name>.yaml``) and a record of the
source, seed and users (``<name>.json``) are written beside the data.

    python -m recbole_onevision.preprocess.sample_users --src dataset/mvshop-large --users 5000 --name mvshop-large-u5k
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys

import numpy as np

from recbole_onevision.io import atomic_open, atomic_write_text, utf8_lines

logger = logging.getLogger(__name__)
SHARED = ("item", "view", "view.npy")  # the catalogue: kept whole


class SampleError(ValueError):
    """A source folder or a request the sampler cannot honour."""


def _rows(path: str) -> tuple[str, list[str]]:
    lines = [line for _, line in utf8_lines(path, SampleError)]
    if not lines:
        raise SampleError(f"{path}: empty; expected a header line")
    return lines[0], lines[1:]


def _column(header: str, path: str, field: str) -> int:
    names = [cell.split(":", 1)[0] for cell in header.rstrip("\n").split("\t")]
    if field not in names:
        raise SampleError(f"{path}: no field {field!r} in the header (has {', '.join(names)})")
    return names.index(field)


def _keep(path: str, field: str, kept: set[str]) -> tuple[list[str], list[int], int]:
    """Lines of ``path`` (header first) whose ``field`` is in ``kept``, their row numbers, and
    how many rows ``path`` has."""
    header, rows = _rows(path)
    column = _column(header, path, field)
    index = [i for i, row in enumerate(rows) if row.rstrip("\n").split("\t")[column] in kept]
    return [header] + [rows[i] for i in index], index, len(rows)


def _write_lines(path: str, lines: list[str]) -> None:
    with atomic_open(path) as out:
        out.writelines(lines)


def _link_or_copy(src: str, dst: str) -> None:
    tmp = f"{dst}.{os.getpid()}.link"
    try:
        os.link(src, tmp)
    except OSError:  # another file system: copy
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def sample_users(src: str, users: int, name: str, out: str | None = None, seed: int = 2025) -> str:
    """Write ``users`` users of the MVShop folder ``src`` (drawn with ``seed``) to
    ``out/name`` (``out``: ``src``'s parent); returns that folder."""
    src = os.path.normpath(src)
    base = os.path.basename(src)
    folder = os.path.join(out or os.path.dirname(src), name)
    if os.path.abspath(folder) == os.path.abspath(src):
        raise SampleError(f"--name {name!r}: the sample would overwrite its source {src}")
    for ext in (*SHARED, "user", "inter", "query", "query.npy"):
        if not os.path.isfile(os.path.join(src, f"{base}.{ext}")):
            raise SampleError(f"{src}: no {base}.{ext}; expected an MVShop folder "
                              "(python -m recbole_onevision.preprocess.mvshop)")
    path = lambda folder_, stem, ext: os.path.join(folder_, f"{stem}.{ext}")  # noqa: E731
    header, rows = _rows(path(src, base, "user"))
    ids = [row.split("\t", 1)[0].rstrip("\n") for row in rows]
    if not 0 < users <= len(ids):
        raise SampleError(f"--users {users}: expected 1 to {len(ids)} (the users of {src})")
    chosen = np.sort(np.random.default_rng(seed).choice(len(ids), users, replace=False))
    kept_users = {ids[i] for i in chosen}
    os.makedirs(folder, exist_ok=True)
    for ext in SHARED:
        _link_or_copy(path(src, base, ext), path(folder, name, ext))
    _write_lines(path(folder, name, "user"), [header] + [rows[i] for i in chosen])
    inter, _, _ = _keep(path(src, base, "inter"), "user_id", kept_users)
    _write_lines(path(folder, name, "inter"), inter)
    column = _column(inter[0], path(src, base, "inter"), "query_id")
    queries = {row.rstrip("\n").split("\t")[column] for row in inter[1:]}
    query, index, total = _keep(path(src, base, "query"), "query_id", queries)
    photos = np.load(path(src, base, "query.npy"), mmap_mode="r")
    if len(photos) != total:
        raise SampleError(f"{path(src, base, 'query.npy')}: {len(photos)} rows; expected one per row of {base}.query")
    with atomic_open(path(folder, name, "query.npy"), "wb") as f:
        np.save(f, np.ascontiguousarray(photos[index]))
    _write_lines(path(folder, name, "query"), query)
    # names MVShop's protocol rather than copying it, so a change to mvshop.yaml reaches the sample
    atomic_write_text(path(folder, name, "yaml"), "# Written by recbole_onevision.preprocess.sample_users: this "
                      "dataset follows the plugin's protocol recbole_onevision/properties/dataset/mvshop.yaml.\n"
                      "protocol: mvshop\n")
    record = {"source": os.path.abspath(src), "seed": seed, "users": users, "of_users": len(ids),
              "sessions": len(inter) - 1, "queries": len(query) - 1}
    atomic_write_text(path(folder, name, "json"), json.dumps(record, indent=2) + "\n")
    logger.info("%s: %d of %d users, %d sessions, %d query photos; catalogue linked from %s",
                name, users, len(ids), record["sessions"], record["queries"], src)
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recbole_onevision.preprocess.sample_users", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="an MVShop folder, e.g. dataset/mvshop-large")
    parser.add_argument("--users", type=int, required=True, help="how many users to keep")
    parser.add_argument("--name", required=True, help="the new dataset's name (its folder beside --src)")
    parser.add_argument("--seed", type=int, default=2025, help="the draw's seed (default 2025)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        sample_users(args.src, args.users, args.name, seed=args.seed)
    except SampleError as err:
        sys.exit(f"sample_users: {err}")


if __name__ == "__main__":
    main()
