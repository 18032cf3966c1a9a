"""``python -m recbole_onevision.search --checkpoint saved/<run>.pth --image photo.jpg [--user U] [--k 10]``

Prints the top k items for one photo: rank, item, score, semantic ID, category and the first
catalogue image. ``--embedding file.npy`` searches with a precomputed embedding instead (MVShop
has no pixels), ``--query <id>`` with one of the dataset's own query photos.
"""
from __future__ import annotations

import argparse
import logging
import sys

import numpy as np


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m recbole_onevision.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pth that run.py wrote (OneVision, MCA, VisualKNN)")
    photo = parser.add_mutually_exclusive_group(required=True)
    photo.add_argument("--image", help="an image file (embedded by the encoder that made the dataset)")
    photo.add_argument("--embedding", help="a .npy holding one embedding of the dataset's width")
    photo.add_argument("--query", help="the id of one of the dataset's query photos")
    parser.add_argument("--user", help="a user id of the dataset (profile and history); default: photo only")
    parser.add_argument("--history", help="comma-separated item ids, oldest first, used as the user's history")
    parser.add_argument("--k", type=int, default=10, help="how many items (1-100, default 10)")
    parser.add_argument("--encoder", help="the image encoder (refused unless it is the one the dataset records)")
    parser.add_argument("--encoder-weights", help="the weights file of a torchvision:, timm: or open_clip: encoder "
                        "(default: the file the dataset records; refused unless its content is the same)")
    return parser.parse_args(argv)


def table(answer) -> str:
    lines = ["| rank | item | score | SID | category | image |", "|---|---|---|---|---|---|"]
    for hit in answer.hits:
        sid = "-".join(map(str, hit.sid)) if hit.sid is not None else ""
        lines.append(f"| {hit.rank} | {hit.item} | {hit.score:.4f} | {sid} | {hit.category} | "
                     f"{hit.images[0] if hit.images else ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from recbole_onevision.search import RunError, Searcher, SearchError

    try:
        searcher = Searcher.from_checkpoint(args.checkpoint, encoder=args.encoder, encoder_weights=args.encoder_weights)
        embedding = None
        if args.embedding:
            embedding = np.load(args.embedding, allow_pickle=False)
        elif args.query:
            embedding = searcher.query_photo(args.query)
        history = [i.strip() for i in args.history.split(",") if i.strip()] if args.history else None
        answer = searcher.search(image=args.image, embedding=embedding, user=args.user, history=history, k=args.k)
    except (RunError, SearchError, FileNotFoundError, ValueError) as err:
        sys.exit(f"search: error: {err}")
    print(f"{searcher.run.name}: {'personalised' if answer.personalised else 'photo-only'} search"
          + (f" ({answer.note})" if answer.note else ""))
    print(table(answer))
    for hit in answer.hits[:1]:
        if hit.images:
            print(f"image {hit.images[0]}: {searcher.catalogue.images[hit.images[0]]}")


if __name__ == "__main__":
    main()
