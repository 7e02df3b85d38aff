"""Atomic checkpoints, keep-last-K rotation, and RNG state capture.

Layout inside a run directory::

    run_dir/checkpoints/step_000123.pt   # one file per save, the last K kept
    run_dir/checkpoints/latest           # text file: name of the newest checkpoint

Every file is written to a temporary name in the same directory, flushed and
``fsync``-ed, then moved over the final name with ``os.replace`` (atomic on POSIX and
Windows). A crash at any moment therefore leaves either the old file or the new one
under the final name, never a half-written one; a leftover ``.tmp`` file is harmless
and never matches ``step_*.pt``.

Resuming bit-identically on CPU needs every RNG that training touches:
:func:`rng_state` captures Python's ``random``, NumPy's global generator and torch's
CPU (and, when present, CUDA) generators as plain values and tensors, so checkpoints
load with ``torch.load(weights_only=True)``. Generators owned by components (e.g. the
replay buffer's) travel in those components' own ``state_dict``.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbrl.atomic import write_bytes_atomic, write_text_atomic
from mbrl.errors import MbrlError

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically write ``state`` with ``torch.save`` to ``path``; returns the path.

    If writing fails (exception, full disk, crash) the previous file under ``path``, if
    any, is left intact and no partial file appears under ``path``.
    """
    p = Path(path)
    write_bytes_atomic(p, lambda f: torch.save(state, f))
    return p


# -- run directory rotation ------------------------------------------------------------
def checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    """``run_dir/checkpoints/step_{step:06d}.pt``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{int(step):06d}.pt"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints of a run, oldest step first (sorted by the step number)."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def save_run_checkpoint(
    run_dir: str | os.PathLike[str], step: int, state: dict[str, Any], keep: int = 3
) -> Path:
    """Save ``state`` as ``run_dir/checkpoints/step_{step}.pt`` and keep the last ``keep``.

    Order matters for crash safety: (1) the checkpoint is written atomically, (2) the
    ``latest`` pointer is updated atomically, (3) only then are older checkpoints beyond
    ``keep`` deleted. At every instant ``latest`` names a complete file.
    """
    if int(keep) < 1:
        raise MbrlError(f"checkpoint keep must be >= 1, got {keep}.")
    path = save_checkpoint(checkpoint_path(run_dir, step), state)
    write_text_atomic(path.parent / LATEST_FILE, path.name + "\n")
    for old in list_checkpoints(run_dir)[: -int(keep)]:
        if old != path:
            old.unlink(missing_ok=True)
    return path


def _step_of(path: Path) -> int:
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else -1


def find_latest(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run, or ``None`` if there is none.

    Reads the ``latest`` pointer, but also scans ``step_*.pt``: a crash between writing
    a checkpoint and updating the pointer leaves the pointer one save behind, and the
    newer file is complete (it was renamed into place), so the highest step wins.
    """
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    candidates = list_checkpoints(run_dir)
    pointer = ckpt_dir / LATEST_FILE
    if pointer.is_file():
        target = ckpt_dir / pointer.read_text().strip()
        if target.is_file() and target not in candidates:
            candidates.append(target)
    if not candidates:
        return None
    return max(candidates, key=_step_of)


# -- loading -------------------------------------------------------------------------
def _previous_hint(path: Path) -> str:
    """Suggest the newest checkpoint older than ``path`` in the same run, if any."""
    step = _step_of(path)
    if path.parent.name != CHECKPOINT_DIR or step < 0:
        return ""
    older = [p for p in list_checkpoints(path.parent.parent) if _step_of(p) < step]
    if not older:
        return " No earlier checkpoint exists in this run."
    return f" Resume from the previous checkpoint instead: {older[-1]}"


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = "cpu",
    weights_only: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    ``weights_only=True`` (the safe unpickler) accepts tensors and plain Python values,
    which is what this project's states contain; pass ``False`` only for trusted files
    holding arbitrary objects. Raises :class:`~mbrl.errors.MbrlError` naming the file
    (and the previous checkpoint of the run, when there is one) if the file is missing
    or cannot be read.
    """
    p = Path(path)
    if not p.is_file():
        raise MbrlError(f"checkpoint file '{p}' does not exist.{_previous_hint(p)}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=weights_only)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as e:
        raise MbrlError(
            f"checkpoint file '{p}' is corrupt or unreadable ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}).{_previous_hint(p)}"
        ) from e
    if not isinstance(state, dict):
        raise MbrlError(
            f"checkpoint file '{p}' holds a {type(state).__name__}, expected a dict "
            "written by save_checkpoint."
        )
    return state


# -- RNG state -------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Capture the global RNGs: Python ``random``, NumPy, torch CPU and CUDA (if any).

    Values are tensors and plain Python types so the dict survives
    ``torch.load(weights_only=True)``.
    """
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)  # legacy=False always returns the dict form
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "cached_gaussian": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNGs captured by :func:`rng_state`.

    CUDA states are restored for the devices present (a checkpoint taken with more GPUs
    restores the first ones); a checkpoint without CUDA state leaves CUDA RNGs alone.
    """
    try:
        py, npy = state["python"], state["numpy"]
        random.setstate(
            (int(py["version"]), tuple(int(x) for x in py["internal"]), py["gauss_next"])
        )
        np.random.set_state(
            {
                "bit_generator": npy["bit_generator"],
                "state": {
                    "key": np.asarray(torch.as_tensor(npy["key"]).cpu().numpy(), dtype=np.uint32),
                    "pos": int(npy["pos"]),
                },
                "has_gauss": int(npy["has_gauss"]),
                "gauss": float(npy["cached_gaussian"]),
            }
        )
        torch.set_rng_state(state["torch"].cpu())
    except (KeyError, TypeError) as e:
        raise MbrlError(
            f"RNG state is missing or malformed ({type(e).__name__}: {e}); expected the dict "
            "returned by mbrl.checkpoint.rng_state()."
        ) from e
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]][: torch.cuda.device_count()]
        for device, s in enumerate(cuda_states):
            torch.cuda.set_rng_state(s, device)
