"""Atomic file writing: write a temporary file beside the target, then rename over it."""
from __future__ import annotations

import contextlib
import os
import tempfile


_UMASK = os.umask(0)
os.umask(_UMASK)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphans(path: str) -> list[str]:
    """Delete the temporaries of ``path`` left by writers that no longer run (a killed run);
    a live writer's is kept. Returns what was deleted."""
    base = os.path.basename(path)
    return _remove_dead(os.path.dirname(os.path.abspath(path)), lambda target: target == base)


def remove_orphans_in(directory: str, suffix: str) -> list[str]:
    """As :func:`remove_orphans`, for every file of ``directory`` ending in ``suffix`` (e.g.
    checkpoints, whose names are unique per run, so no later writer of the same name cleans up)."""
    return _remove_dead(directory, lambda target: target.endswith(suffix))


def _remove_dead(directory: str, wanted) -> list[str]:
    """Remove ``.<target>.<pid>.<random>.tmp`` files (:func:`atomic_open`'s temporaries) whose
    target is ``wanted`` and whose writer is gone."""
    removed = []
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        target, _, pid = name[1:-len(".tmp")].rpartition(".")[0].rpartition(".")
        if wanted(target) and pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
                removed.append(name)
    return removed


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file for writing; on success it replaces ``path`` in one rename. The
    temporary is named after this process, so the next writer of ``path`` removes one a killed
    run left behind."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_orphans(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def utf8_lines(path: str, error: type[Exception] = ValueError):
    """``(line number, text)`` of each line of ``path``; bytes that are not UTF-8 raise ``error``
    naming the file, line and column (Python's own error names neither)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise error(f"{path}, line {lineno}: byte {raw[err.start]:#04x} at column {err.start + 1} is not "
                            f"UTF-8") from None


def utf8_text(path: str, error: type[Exception] = ValueError) -> str:
    """The whole of ``path`` as text, with :func:`utf8_lines`' error for bytes that are not UTF-8."""
    return "".join(line for _, line in utf8_lines(path, error))
