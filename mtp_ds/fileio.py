"""Writing files that a crash, even a power loss, must not leave half-written.

Every writer goes through a temporary file in the target's own directory (same file system), named
`<name>.<random>.tmp`: it is written, flushed and fsynced, renamed over the target with `os.replace`, and the
directory is fsynced so that the rename itself is on disk. On any exception the temporary file is removed and
the previous file stays as it was. Stdlib only: every room of the package may import this module.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

# what a platform or file system answers when it cannot fsync that kind of file (not a failed write): skipped
UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES, errno.EPERM}


def _fsync_path(path: str | os.PathLike, flags: int) -> None:
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno in UNSUPPORTED:
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in UNSUPPORTED:
            raise
    finally:
        os.close(descriptor)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of directory `path` (files created, renamed or removed in it) durable."""
    if hasattr(os, "O_DIRECTORY"):  # elsewhere (Windows) a directory cannot be opened: nothing to do
        _fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


def fsync_file(path: str | os.PathLike) -> None:
    """Make the contents of the file at `path`, written by anyone, durable."""
    _fsync_path(path, os.O_RDONLY)


def fsync_tree(root: str | os.PathLike, *, files: bool = True) -> None:
    """fsync every file (unless files=False) and then every directory under `root`, `root` last."""
    for directory, _, names in os.walk(root, topdown=False):
        for name in names if files else ():
            fsync_file(os.path.join(directory, name))
        fsync_dir(directory)


def _new_temporary(path: Path, mode: str, open_kwargs: dict) -> tuple[Path, IO]:
    """A new file next to `path`, created exclusively ("x": 0o666 minus the umask, like a plain open)."""
    while True:
        temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return temporary, open(temporary, mode.replace("w", "x"), **open_kwargs)
        except FileExistsError:
            continue
        except BaseException:
            temporary.unlink(missing_ok=True)  # e.g. an unknown encoding, refused after the file was created
            raise


@contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """A file object (mode "w" or "wb") that replaces `path` when the block ends without an exception."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    temporary, handle = _new_temporary(path, mode, open_kwargs)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str | None = None) -> None:
    """Like `Path.write_text`, atomically (the same default encoding)."""
    with atomic_writer(path, "w", encoding=encoding) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, value, **dump_kwargs) -> None:
    """`json.dumps(value, **dump_kwargs)` and a newline; a value that does not serialise writes nothing."""
    atomic_write_text(path, json.dumps(value, **dump_kwargs) + "\n")
