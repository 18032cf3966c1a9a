"""Checks of a dataset's atomic files made before RecBole loads them, for what RecBole would
accept silently or fail on with a traceback: bytes that are not UTF-8, a header field without a
known type, a second row for one item or user (RecBole keeps one of them) and a time field typed
as a token (the time-ordered split would then sort timestamps as strings)."""
from __future__ import annotations

import os

import pandas as pd

from recbole_onevision.io import utf8_lines


FIELD_TYPES = ("token", "token_seq", "float", "float_seq")  # RecBole's atomic-file types
SUFFIXES = ("inter", "item", "user", "view", "query")


def check_atomic_files(config) -> None:
    base = os.path.join(config["data_path"], config["dataset"])
    separator = config["field_separator"] or "\t"
    for suffix in SUFFIXES:
        if os.path.isfile(f"{base}.{suffix}"):
            _check_utf8(f"{base}.{suffix}")
            _check_header_types(f"{base}.{suffix}", separator)
    for suffix, field in (("item", config["ITEM_ID_FIELD"]), ("user", config["USER_ID_FIELD"])):
        _check_unique_ids(f"{base}.{suffix}", field, separator)
    time_field, order = config["TIME_FIELD"], (config["eval_args"] or {}).get("order")
    if time_field and order == "TO":
        _check_time_type(f"{base}.inter", time_field, separator)


def _header(path: str, separator: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        line = f.readline().rstrip("\r\n")
    return [tuple(column.partition(":")[::2]) for column in line.split(separator)]


def _check_utf8(path: str) -> None:
    for _ in utf8_lines(path):
        pass


def _check_header_types(path: str, separator: str) -> None:
    for column, (name, kind) in enumerate(_header(path, separator), 1):
        if kind not in FIELD_TYPES:
            raise ValueError(f"{path}, line 1, column {column}: field {name!r} has type {kind!r}; expected "
                             f"'name:type' with type one of {', '.join(FIELD_TYPES)}")


def _check_unique_ids(path: str, field: str, separator: str) -> None:
    if not field or not os.path.isfile(path):
        return
    names = [name for name, _ in _header(path, separator)]
    if field not in names:
        return
    ids = pd.read_csv(path, sep=separator, usecols=[names.index(field)], dtype=str, header=0,
                      encoding="utf-8", keep_default_na=False, quoting=3).iloc[:, 0]
    repeated = ids.duplicated(keep="first")
    if repeated.any():
        row = int(repeated.to_numpy().nonzero()[0][0])
        first = int((ids == ids.iloc[row]).to_numpy().nonzero()[0][0])
        raise ValueError(f"{path}, line {row + 2}: {field} {ids.iloc[row]!r} is listed again (first on line "
                         f"{first + 2}); every {field} needs one row, RecBole would silently keep one of them")


def _check_time_type(path: str, field: str, separator: str) -> None:
    if not os.path.isfile(path):
        return
    types = dict(_header(path, separator))
    if field in types and types[field] != "float":
        raise ValueError(f"{path}, line 1: field {field!r} is typed {types[field]!r}; the time-ordered split "
                         f"needs '{field}:float' (a token would sort timestamps as strings)")
