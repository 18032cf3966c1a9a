"""Checks of a dataset's atomic files made before RecBole loads them, for what RecBole would
accept silently or fail on with a traceback: bytes that are not UTF-8, a header field without a
known type, a row with more or fewer fields than its header (RecBole drops the extra ones or
fills the missing ones in, silently), a float field that is not a number (RecBole names neither
file nor line), an interaction file without rows, a second row for one item or user (RecBole
keeps one of them) and a time field typed as a token (the time-ordered split would then sort
timestamps as strings)."""
from __future__ import annotations

import os

import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES

from recbole_onevision.io import utf8_lines


FIELD_TYPES = ("token", "token_seq", "float", "float_seq")  # RecBole's atomic-file types
SUFFIXES = ("inter", "item", "user", "view", "query")
RECBOLE_LOADS = ("inter", "item", "user")  # RecBole reads these (with their floats); the plugin the others


def check_atomic_files(config) -> None:
    base = os.path.join(config["data_path"], config["dataset"])
    separator = config["field_separator"] or "\t"
    for suffix in SUFFIXES:
        if os.path.isfile(f"{base}.{suffix}"):
            _check_rows(f"{base}.{suffix}", separator, config["seq_separator"] or " ",
                        _loaded_fields(config, suffix) if suffix in RECBOLE_LOADS else lambda name: False)
    for suffix, field in (("item", config["ITEM_ID_FIELD"]), ("user", config["USER_ID_FIELD"])):
        _check_unique_ids(f"{base}.{suffix}", field, separator)
    time_field, order = config["TIME_FIELD"], (config["eval_args"] or {}).get("order")
    if time_field and order == "TO":
        _check_time_type(f"{base}.inter", time_field, separator)


def _header(path: str, separator: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        line = f.readline().rstrip("\r\n")
    return [tuple(column.partition(":")[::2]) for column in line.split(separator)]


def _loaded_fields(config, suffix: str):
    """Whether RecBole loads a field of ``<dataset>.<suffix>`` (``load_col``, ``unload_col``)."""
    load, unload = config["load_col"], config["unload_col"] or {}
    listed = None if load is None or load.get(suffix) == "*" else set(load.get(suffix) or ())
    left_out = set(unload.get(suffix) or ())
    return lambda name: (listed is None or name in listed) and name not in left_out


def _check_rows(path: str, separator: str, seq_separator: str, loaded) -> None:
    """UTF-8 (file, line, column), header types, each row's number of fields, and the floats of
    the float fields RecBole loads (``loaded(name)``), in one pass over the file."""
    header, floats, rows = None, [], 0
    for lineno, line in utf8_lines(path):
        line = line.rstrip("\r\n")
        if header is None:
            header = [tuple(column.partition(":")[::2]) for column in line.split(separator)]
            for column, (name, kind) in enumerate(header, 1):
                if kind not in FIELD_TYPES:
                    raise ValueError(f"{path}, line 1, column {column}: field {name!r} has type {kind!r}; expected "
                                     f"'name:type' with type one of {', '.join(FIELD_TYPES)}")
            floats = [(i, name, kind) for i, (name, kind) in enumerate(header)
                      if kind in ("float", "float_seq") and loaded(name)]
            continue
        if not line:
            continue  # RecBole skips blank lines
        if line.count(separator) != len(header) - 1:
            cells = line.split(separator)
            raise ValueError(f"{path}, line {lineno}: {len(cells)} field{'s' * (len(cells) != 1)} where the header "
                             f"has {len(header)} ({', '.join(name for name, _ in header)}); a value holding the "
                             f"separator {separator!r}, or one left out, shifts the columns")
        if floats:
            cells = line.split(separator)
            for i, name, kind in floats:
                if not _is_float(cells[i], kind, seq_separator):
                    raise ValueError(f"{path}, line {lineno}, column {i + 1}: field {name!r} is typed {kind!r}, "
                                     f"got {cells[i]!r}")
        rows += 1
    if path.endswith(".inter") and header is not None and rows == 0:
        raise ValueError(f"{path}: no interactions (nothing below the header)")


def _is_float(cell: str, kind: str, seq_separator: str) -> bool:
    """As RecBole reads it: a float cell through pandas (which takes its missing-value spellings),
    each element of a float_seq through float()."""
    try:
        if kind == "float":
            if cell not in STR_NA_VALUES:
                float(cell)
        else:
            for value in filter(None, cell.split(seq_separator)):
                float(value)
    except ValueError:
        return False
    return True


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
