"""MVShop: a seeded, generated multi-view shop with users, the project's bundled default data.

The generative story (documented with its parameters in docs/data.md) is in
:mod:`~recbole_onevision.preprocess.mvshop_story`: a category tree, brands, look-alike families
of products, catalogue views, query photos through a stronger distortion, users with tastes and
profiles, and sessions in which a user photographs a product and clicks one of its look-alikes.

Files written to ``<out>/mvshop-<scale>/`` (RecBole atomic files plus ``.npy`` matrices whose
rows follow the rows of the atomic file of the same name): ``.item``, ``.user``, ``.inter``,
``.view`` + ``.view.npy``, ``.query`` + ``.query.npy``, and ``.json`` with the spec and seed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time

import numpy as np

from recbole_onevision.preprocess.atomic import write_atomic_file
from recbole_onevision.preprocess.mvshop_story import (SCALES, MVShopSpec, catalogue_views, make_catalogue,
                                                       make_sessions, make_users, query_photos)
from recbole_onevision.io import atomic_open, atomic_write_text

logger = logging.getLogger(__name__)
GENERATOR_VERSION = 1  # bump whenever the story (mvshop_story.py) changes: cached folders are reused by it
DEFAULT_SEED = 2025  # run.py's (mvshop_seed in properties/dataset/mvshop.yaml) and the command line's


def generate(scale: str, out: str, seed: int = DEFAULT_SEED, spec: MVShopSpec | None = None) -> str:
    """Generate MVShop ``scale`` into ``out/mvshop-<scale>/``; returns that folder.

    Reuses an existing folder whose ``.json`` records the same spec, seed and generator
    version (so ``run.py`` can call this on every start); anything else is regenerated.
    """
    if scale not in SCALES and spec is None:
        raise ValueError(f"unknown MVShop scale {scale!r}; expected one of {', '.join(SCALES)}")
    spec = spec or SCALES[scale]
    name = f"mvshop-{scale}"
    folder = os.path.join(out, name)
    meta = {"generator_version": GENERATOR_VERSION, "seed": seed, "spec": dataclasses.asdict(spec)}
    meta_path = os.path.join(folder, f"{name}.json")
    if os.path.isfile(meta_path):
        try:
            with open(meta_path, encoding="utf-8") as f:
                recorded = json.load(f)
        except ValueError:  # truncated or edited by hand: the record proves nothing, so regenerate
            logger.warning("%s: %s is unreadable; generating the dataset again", name, meta_path)
            recorded = None
        if recorded == json.loads(json.dumps(meta)):
            logger.info("%s: up to date (%s)", name, meta_path)
            return folder
    start = time.time()
    rng = np.random.default_rng(seed)
    logger.info("%s: generating %d items, %d users (seed %d)", name, spec.n_items, spec.n_users, seed)
    cat = make_catalogue(spec, rng)
    views = catalogue_views(spec, cat, rng)
    users = make_users(spec, cat, rng)
    sessions = make_sessions(spec, cat, users, rng)
    pictured = np.array([s[1] for s in sessions])
    queries = query_photos(spec, cat, pictured, rng)

    path = lambda ext: os.path.join(folder, f"{name}.{ext}")  # noqa: E731
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # the folder is stale until the new .json lands last
    category_tokens = [["c" + "_".join(map(str, p[: d + 1])) for d in range(len(p))] for p in cat.leaf_paths]
    write_atomic_file(path("item"), ["item_id:token", "category:token_seq", "brand:token", "price:float"],
                      ((f"i{i}", category_tokens[cat.leaf_of[i]], f"b{cat.brand_of[i]}", cat.price[i])
                       for i in range(spec.n_items)))
    write_atomic_file(path("user"), ["user_id:token", "age:token", "region:token"],
                      ((f"u{u}", f"age{users.age[u]}", f"r{users.region[u]}") for u in range(spec.n_users)))
    write_atomic_file(path("inter"), ["user_id:token", "item_id:token", "query_id:token", "timestamp:float",
                                      "behaviour:token"],
                      ((f"u{u}", f"i{c}", f"q{k}", t, "order" if o else "click")
                       for k, (u, _, c, o, t) in enumerate(sessions)))
    write_atomic_file(path("query"), ["query_id:token", "product_id:token"],
                      ((f"q{k}", f"i{p}") for k, p in enumerate(pictured)))
    write_atomic_file(path("view"), ["view_id:token", "item_id:token"],
                      ((f"v{r}", f"i{r // spec.views_per_item}") for r in range(len(views))))
    for ext, matrix in (("query.npy", queries), ("view.npy", views)):
        with atomic_open(path(ext), "wb") as f:
            np.save(f, matrix)
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    logger.info("%s: %d sessions, %d views written to %s in %.1fs", name, len(sessions), len(views),
                folder, time.time() - start)
    return folder


def ensure(dataset: str, data_path: str, seed: int | None = DEFAULT_SEED) -> bool:
    """If ``dataset`` names an MVShop scale (``mvshop-mini`` ...), generate it under
    ``data_path`` with ``seed`` (config ``mvshop_seed``) unless it is already there.
    Returns whether ``dataset`` is MVShop."""
    scale = dataset[len("mvshop-"):] if dataset.startswith("mvshop-") else None
    if scale not in SCALES:
        return False
    if seed is None:
        seed = DEFAULT_SEED
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"config mvshop_seed: expected an integer (the MVShop generator's seed), got {seed!r}")
    generate(scale, data_path, seed)
    return True


def ensure_for(config) -> bool:
    """:func:`ensure` for a RecBole config: its dataset, under its ``data_path``'s parent (RecBole
    sets ``data_path`` to ``<data_path>/<dataset>``), with its ``mvshop_seed``."""
    return ensure(config["dataset"], os.path.dirname(os.path.normpath(config["data_path"])), config["mvshop_seed"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recbole_onevision.preprocess.mvshop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="mini")
    parser.add_argument("--out", default="dataset", help="data_path to write into (default: dataset)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate(args.scale, args.out, args.seed)


if __name__ == "__main__":
    main()
