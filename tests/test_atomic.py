"""Atomic writes (mbrl.atomic): whole files only, no temp left behind, normal file modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mbrl.atomic import atomic_path, default_file_mode, write_text_atomic
from mbrl.checkpoint import save_checkpoint


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_get_the_mode_open_would_give(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "hello")
        ckpt = save_checkpoint(tmp_path / "step_000003.pt", {"x": 1})
        (tmp_path / "plain.txt").write_text("x")
        expected = _mode(tmp_path / "plain.txt")
    finally:
        os.umask(old)
    assert expected == 0o644 == 0o666 & ~0o022
    assert _mode(tmp_path / "a.txt") == expected  # mkstemp alone would give 0600
    assert _mode(ckpt) == expected
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_default_file_mode_follows_the_umask() -> None:
    old = os.umask(0o077)
    try:
        assert default_file_mode() == 0o600
    finally:
        os.umask(old)
    assert os.umask(old) == old  # and the umask is left as it was


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    dst = tmp_path / "data.bin"
    dst.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(dst) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert dst.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]
