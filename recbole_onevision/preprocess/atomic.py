"""Writing RecBole atomic files (``.inter``, ``.item``, ...): a typed header, tab-separated rows."""
from __future__ import annotations

from typing import Iterable, Sequence

from recbole_onevision.io import atomic_open


def write_atomic_file(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> int:
    """Write ``header`` (``name:type`` fields) and ``rows``; token_seq cells may be lists.

    Written to a temporary file and renamed, so a crash never leaves half a file.
    Returns the number of rows written.
    """
    count = 0
    with atomic_open(path) as out:
        out.write("\t".join(header) + "\n")
        for row in rows:
            out.write("\t".join(" ".join(map(str, c)) if isinstance(c, (list, tuple)) else str(c)
                                for c in row) + "\n")
            count += 1
    return count
