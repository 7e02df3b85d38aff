"""Atomic file writes: a file appears under its final name whole or not at all.

Every writer in the project (checkpoints, configs, summaries, datasets, results) writes a
temporary file ``.<name>.<random><suffix>`` in the destination's folder, optionally
flushes it to disk, and moves it over the final name with ``os.replace`` (atomic on POSIX
and Windows). A crash leaves the old file or the new one, never a half-written one; a
leftover temp file is harmless (nothing globs for it) and is cleaned up on the way out.

``tempfile.mkstemp`` creates its file with mode ``0600``; the finished file gets the
mode a plain ``open(path, "w")`` would have given it (``0666`` minus the umask), so
datasets and results written here are as readable as any other file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: fsync the directory entry (not possible on Windows)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(dst: Path, *, suffix: str = ".tmp", durable: bool = False) -> Iterator[Path]:
    """Yield a temp path next to ``dst``; on a clean exit move it onto ``dst``.

    The caller writes the whole file to the yielded path (by name: h5py, torch,
    stable-baselines3 savers). ``durable`` fsyncs the file and the folder, so the new
    file survives a power cut (checkpoints); on an exception nothing is renamed and the
    temp file is removed.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, dst)
        if durable:
            fsync_dir(dst.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(dst: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on an open binary temp file, then durably rename it to ``dst``."""
    with atomic_path(dst, durable=True) as tmp, tmp.open("wb") as f:
        write(f)
        f.flush()


def write_text_atomic(dst: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``dst`` through a durable temp file."""
    write_bytes_atomic(dst, lambda f: f.write(text.encode("utf-8")))


__all__ = [
    "atomic_path",
    "default_file_mode",
    "fsync_dir",
    "write_bytes_atomic",
    "write_text_atomic",
]
