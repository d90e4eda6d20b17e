"""The one atomic-write helper of the project: a reader sees the old file or the whole new one.

Every file the project writes for others to read (shards, indexes, the build plan and parts,
parquet tables, checkpoints, exports, configs, reports) goes through here: the bytes go to a
temporary file created *exclusively* (``O_CREAT | O_EXCL`` with a random name, so a planted
symlink or a second writer cannot be followed or shared) in the target's own folder, are
flushed, and the file is renamed over the target (``os.replace``: atomic on POSIX).

Temporary names are ``.<target name>.tmp-<random>``: dot-prefixed (no ``*.tar`` glob picks them
up) and recognisable, so a builder can remove the ones a killed process left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def temp_prefix(path: Path) -> str:
    """Every temporary file for ``path`` starts with this (``glob(temp_prefix(p) + '*')``)."""
    return f".{path.name}.tmp-"


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it; restored at once
    os.umask(mask)
    return mask


def name_target(exc: BaseException, path: Path) -> None:
    """A failed ``write``/``fsync`` (full disk: ENOSPC, quota: EDQUOT, size limit: EFBIG) raises an
    OSError without a file name; give it the target's, so the message says which file failed."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(path)


class AtomicFile:
    """A temporary file that becomes ``path`` on ``commit()`` and vanishes on ``abort()``.

    For writers with a lifetime longer than one call (the shard writer); everything else uses
    ``atomic_open`` / ``atomic_write``.
    """

    def __init__(self, path: str | Path, mode: str = "wb", *, encoding: str | None = None):
        if mode not in ("wb", "w"):
            raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=temp_prefix(self.path))
        self.tmp = Path(tmp)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide shared datasets from others
            self.file: IO = os.fdopen(fd, mode, **({"encoding": encoding or "utf-8"} if mode == "w" else {}))
        except BaseException:
            os.close(fd)
            self.tmp.unlink(missing_ok=True)
            raise
        self._done = False

    def commit(self, *, fsync: bool = True) -> None:
        """Flush (and fsync) the data, then rename it over ``path``."""
        try:
            self.file.flush()
            if fsync:
                os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException as exc:
            name_target(exc, self.path)
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, encoding: str | None = None,
                fsync: bool = True) -> Iterator[IO]:
    """``with atomic_open(p) as f: f.write(...)``: ``p`` is replaced only if the block succeeds."""
    target = AtomicFile(path, mode, encoding=encoding)
    try:
        yield target.file
    except BaseException as exc:
        name_target(exc, target.path)
        target.abort()
        raise
    target.commit(fsync=fsync)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """For writers that insist on a file name (PyAV guesses the container from the suffix): yields
    the name of an exclusively created empty temporary file with ``path``'s suffix, renamed over
    ``path`` if the block succeeds."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target), suffix=target.suffix)
    tmp_path = Path(tmp)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield tmp_path
        if fsync:
            with open(tmp_path, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes | str, *, fsync: bool = True) -> None:
    """Write ``data`` (str: UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb", fsync=fsync) as handle:
        handle.write(data)
