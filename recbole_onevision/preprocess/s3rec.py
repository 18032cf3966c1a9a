"""Amazon 2014 5-core files as published by S3-Rec (and evaluated by TIGER) -> RecBole.

Source files (from the repository RUCAIBox/CIKM2020-S3Rec, folder ``data/``):
``<Name>.txt`` with one line per user, ``user_id item_id item_id ...`` in time order, and
``<Name>_item2attributes.json`` mapping item id -> attribute ids (category path and brand).

Output, one folder per dataset: ``<name>.inter`` (user_id, item_id, timestamp = position in
the user's sequence, so RecBole's time ordering reproduces the file's order) and ``<name>.item``
(item_id, attributes as a token sequence). Nothing is filtered: the standard protocol is
leave-one-out on these exact sequences (see ``properties/dataset/<name>.yaml``).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from recbole_onevision.io import utf8_lines, utf8_text
from recbole_onevision.preprocess.atomic import write_atomic_file

logger = logging.getLogger(__name__)

# dataset name -> (source stem, expected users, items, interactions) of the published files
KNOWN = {
    "Beauty": ("Beauty", 22363, 12101, 198502),
    "Toys": ("Toys_and_Games", 19412, 11924, 167597),
}


class ConversionError(ValueError):
    """Malformed source data; the message names the file and line."""


@dataclass
class Stats:
    users: int
    items: int
    interactions: int


def read_sequences(path: str) -> dict[str, list[str]]:
    """``user item item ...`` lines -> {user: [items]}, validating every line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sequence file not found: {path}")
    sequences: dict[str, list[str]] = {}
    for lineno, line in utf8_lines(path, ConversionError):
        fields = line.split()
        if not fields:
            raise ConversionError(f"{path}, line {lineno}: empty line (expected 'user_id item_id ...')")
        bad = next((x for x in fields if not x.isdigit()), None)
        if bad is not None:
            raise ConversionError(f"{path}, line {lineno}: {bad!r} is not a numeric id")
        if len(fields) < 2:
            raise ConversionError(f"{path}, line {lineno}: user {fields[0]} has no items")
        if fields[0] in sequences:
            raise ConversionError(f"{path}, line {lineno}: user {fields[0]} appears twice")
        sequences[fields[0]] = fields[1:]
    if not sequences:
        raise ConversionError(f"{path}: no sequences")
    return sequences


def read_attributes(path: str, items: set[str]) -> dict[str, list[int]]:
    """item id -> attribute ids; every key must be an item that occurs in the sequences."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"attribute file not found: {path}")
    try:
        raw = json.loads(utf8_text(path, ConversionError))
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}, line {err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(raw, dict):
        raise ConversionError(f"{path}: expected a JSON object item_id -> [attribute ids]")
    attributes = {}
    for item, values in raw.items():
        if item not in items:
            raise ConversionError(f"{path}: item {item!r} never occurs in the sequence file")
        if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
            raise ConversionError(f"{path}: item {item!r}: expected a list of integer attribute ids")
        attributes[item] = values
    return attributes


def convert(name: str, src: str, out: str, check_known: bool = True) -> Stats:
    """Convert dataset ``name`` (a key of :data:`KNOWN`, or a file stem) from ``src`` into
    ``out/<name>/``. For the known datasets the published statistics are checked."""
    stem = KNOWN[name][0] if name in KNOWN else name
    seq_path = os.path.join(src, f"{stem}.txt")
    attr_path = os.path.join(src, f"{stem}_item2attributes.json")
    sequences = read_sequences(seq_path)
    items = {i for seq in sequences.values() for i in seq}
    attributes = read_attributes(attr_path, items)
    stats = Stats(len(sequences), len(items), sum(map(len, sequences.values())))
    if check_known and name in KNOWN:
        expected = Stats(*KNOWN[name][1:])
        if stats != expected:
            raise ConversionError(f"{seq_path}: found {stats}, but the published {name} has {expected}")
    missing = len(items) - len(attributes)
    if missing:
        logger.warning("%s: %d items have no attributes; their attribute field is left empty",
                       attr_path, missing)

    folder = os.path.join(out, name)
    write_atomic_file(
        os.path.join(folder, f"{name}.inter"),
        ["user_id:token", "item_id:token", "timestamp:float"],
        ((user, item, pos) for user, seq in sequences.items() for pos, item in enumerate(seq)),
    )
    write_atomic_file(
        os.path.join(folder, f"{name}.item"),
        ["item_id:token", "attributes:token_seq"],
        ((item, attributes.get(item, [])) for item in sorted(items, key=int)),
    )
    logger.info("%s: %d users, %d items, %d interactions -> %s", name, stats.users, stats.items,
                stats.interactions, folder)
    return stats
