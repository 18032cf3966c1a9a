"""Reading and validating the multi-view files: ``.view``/``.query`` + their ``.npy`` matrices.

Layout (docs/data.md): ``<name>.view`` has ``view_id:token`` and ``item_id:token``;
``<name>.query`` has ``query_id:token`` and ``product_id:token`` (empty where the pictured
product is unknown). Row *k* of ``<name>.<kind>.npy`` is the embedding of row *k* of the
atomic file. Every problem raises :class:`MultiViewDataError` naming the file, the line
(1 = header) or row, and what was expected; nothing is dropped.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd


class MultiViewDataError(ValueError):
    """A multi-view file is malformed; the message names the file and line or row."""


@dataclasses.dataclass
class EmbeddingTable:
    path: str
    ids: np.ndarray  # str tokens, one per row
    refs: np.ndarray  # str tokens ('' where unknown), one per row
    matrix: np.ndarray  # (rows, width) float32


def read_embedding_table(path: str, id_field: str, ref_field: str, width: int | None = None,
                         ref_required: bool = True) -> EmbeddingTable:
    """Read ``path`` (atomic file with ``id_field`` and ``ref_field`` tokens) and ``path.npy``."""
    npy = f"{path}.npy"
    for f in (path, npy):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"multi-view file not found: {f}")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    for field in (id_field, ref_field):
        if f"{field}:token" not in table.columns:
            raise MultiViewDataError(f"{path}, line 1: expected a column '{field}:token', "
                                     f"found {list(table.columns)}")
    ids = table[f"{id_field}:token"].to_numpy()
    refs = table[f"{ref_field}:token"].to_numpy()
    if len(ids) == 0:
        raise MultiViewDataError(f"{path}: no rows")
    for name, column in ((id_field, ids), (ref_field, refs if ref_required else ids)):
        empty = np.flatnonzero(column == "")
        if len(empty):
            raise MultiViewDataError(f"{path}, line {empty[0] + 2}: empty {name}")
    duplicated = pd.Series(ids).duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise MultiViewDataError(f"{path}, line {row + 2}: duplicate {id_field} {ids[row]!r}")

    try:
        matrix = np.load(npy, mmap_mode="r")
    except ValueError as err:
        raise MultiViewDataError(f"{npy}: not a NumPy .npy matrix ({err})") from None
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise MultiViewDataError(f"{npy}: expected a ({len(ids)}, width) matrix, one row per line of "
                                 f"{os.path.basename(path)}, found shape {matrix.shape}")
    if width is not None and matrix.shape[1] != width:
        raise MultiViewDataError(f"{npy}: embeddings are {matrix.shape[1]}-d, expected {width}-d")
    matrix = np.array(matrix, dtype=np.float32)  # into memory (and writable) for torch
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MultiViewDataError(f"{npy}, row {row} ({id_field} {ids[row]!r}): NaN or infinite value")
    return EmbeddingTable(path, ids, refs, matrix)


def map_tokens(table: EmbeddingTable, what: str, token2id: dict, allow_empty: bool = False) -> np.ndarray:
    """Internal ids of ``table.refs`` (0 for empty ones when allowed); unknown tokens raise."""
    out = np.zeros(len(table.refs), dtype=np.int64)
    for row, token in enumerate(table.refs):
        if token == "" and allow_empty:
            continue
        if token not in token2id:
            raise MultiViewDataError(f"{table.path}, line {row + 2}: unknown {what} {token!r} "
                                     "(not in the dataset's items)")
        out[row] = token2id[token]
    return out
