"""Dataset converters: ``python -m recbole_onevision.data.convert <source> ...``.

Sources:
  s3rec   Amazon 2014 5-core Beauty/Toys as published by S3-Rec (the TIGER protocol files).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

DEFAULT_S3REC_SRC = os.path.join("..", "shared", "data", "amazon-s3rec")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recbole_onevision.data.convert",
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from recbole_onevision.data import s3rec

    try:
        for name in args.datasets:
            s3rec.convert(name, args.src, args.out)
    except (FileNotFoundError, s3rec.ConversionError) as err:
        sys.exit(f"convert s3rec: error: {err}")


if __name__ == "__main__":
    main()
