"""Atomic file writes: a reader never sees a half-written file.

Every write goes to `<name>.tmp-<pid>` in the same directory (same filesystem, so the final
`os.replace` is atomic on POSIX), is flushed and fsync'ed, then renamed over the target. A crash
leaves at most a stale `*.tmp-<pid>` file behind, never a truncated target;
`remove_stale_temps` cleans those up for processes that are gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"  # temp names are f"{final_name}{TMP_MARK}{pid}"


def temp_path(path: str | os.PathLike) -> Path:
    """The temp name used while `path` is being written by this process."""
    path = Path(path)
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path to write to; on success it is fsync'ed and renamed to `path`.

    On any exception the temp file is removed and `path` is left untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: directory {path.parent} does not exist")
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """JSON with sorted keys (byte-identical output for equal content) + trailing newline."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=json_default) + "\n")


def remove_stale_temps(directory: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Delete `<pattern>.tmp-<pid>` files in `directory` whose writer process no longer runs.

    NOTE pids are only meaningful on this host: a directory written concurrently from several
    machines should not be cleaned this way while they run.
    """
    removed = []
    for p in Path(directory).glob(f"{pattern}{TMP_MARK}*"):
        m = re.search(re.escape(TMP_MARK) + r"(\d+)$", p.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    # the rename itself is durable only once the directory entry is flushed (POSIX)
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")
