"""Checkpoints: atomic writes, rotation, latest lookup, clear errors, bit-identical resume."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest
import torch
from torch import nn

from mbrl.checkpoint import (
    checkpoint_path,
    find_latest,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_run_checkpoint,
    set_rng_state,
)
from mbrl.data.buffer import ReplayBuffer
from mbrl.errors import MbrlError

torch.set_num_threads(1)


def failing_save(obj: Any, f: BinaryIO, *args: Any, **kwargs: Any) -> None:
    """Stand-in for torch.save that dies after writing part of a zip archive."""
    f.write(b"PK\x03\x04" + b"\x00" * 100)
    f.flush()
    raise OSError("simulated crash mid-write")


def test_round_trip(tmp_path: Path) -> None:
    state: dict[str, Any] = {
        "w": torch.arange(6.0).reshape(2, 3),
        "step": 7,
        "cfg": {"lr": 3e-4, "name": "x"},
    }
    path = save_checkpoint(tmp_path / "a" / "ck.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 7
    assert loaded["cfg"] == {"lr": 3e-4, "name": "x"}


def test_failed_write_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # temp file cleaned up


def test_failed_first_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck.pt", {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_keep_last_k_and_latest_pointer(tmp_path: Path) -> None:
    for step in range(100, 700, 100):
        save_run_checkpoint(tmp_path, step, {"step": step}, keep=3)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_000400.pt", "step_000500.pt", "step_000600.pt"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000600.pt"
    latest = find_latest(tmp_path)
    assert latest == checkpoint_path(tmp_path, 600)
    assert load_checkpoint(latest)["step"] == 600
    # Steps past six digits sort by number, not by name.
    save_run_checkpoint(tmp_path, 1_000_000, {"step": 1_000_000}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000600.pt", "step_1000000.pt"]
    assert find_latest(tmp_path) == checkpoint_path(tmp_path, 1_000_000)


def test_find_latest_edge_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_latest(tmp_path) is None
    save_run_checkpoint(tmp_path, 10, {"step": 10})
    # A crash during the next save leaves the previous checkpoint as the latest.
    with monkeypatch.context() as m:
        m.setattr(torch, "save", failing_save)
        with pytest.raises(OSError):
            save_run_checkpoint(tmp_path, 20, {"step": 20})
    assert find_latest(tmp_path) == checkpoint_path(tmp_path, 10)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []
    # A crash after the checkpoint's rename but before the pointer update: the newer,
    # complete file wins over the stale pointer.
    save_checkpoint(checkpoint_path(tmp_path, 30), {"step": 30})
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000010.pt"
    assert find_latest(tmp_path) == checkpoint_path(tmp_path, 30)


def test_load_errors_name_file_and_previous(tmp_path: Path) -> None:
    save_run_checkpoint(tmp_path, 1, {"step": 1})
    save_run_checkpoint(tmp_path, 2, {"step": 2})
    broken = checkpoint_path(tmp_path, 2)
    broken.write_bytes(broken.read_bytes()[:50])  # e.g. a disk-level truncation
    with pytest.raises(MbrlError, match=r"step_000002\.pt' is corrupt") as err:
        load_checkpoint(broken)
    assert str(checkpoint_path(tmp_path, 1)) in str(err.value)
    with pytest.raises(MbrlError, match=r"step_000005\.pt' does not exist") as err:
        load_checkpoint(checkpoint_path(tmp_path, 5))
    assert "step_000002.pt" in str(err.value)
    with pytest.raises(MbrlError, match="No earlier checkpoint"):
        load_checkpoint(checkpoint_path(tmp_path, 0))
    garbage = tmp_path / "random.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(MbrlError, match=r"random\.pt"):
        load_checkpoint(garbage)
    with pytest.raises(MbrlError, match="keep must be"):
        save_run_checkpoint(tmp_path, 3, {}, keep=0)


def draw_all() -> list[float]:
    return [
        random.random(),
        random.gauss(0.0, 1.0),
        float(np.random.rand()),
        float(np.random.randn()),
        *torch.rand(3).tolist(),
        *torch.randn(3).tolist(),
    ]


def test_rng_round_trip_through_file(tmp_path: Path) -> None:
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    # Odd numbers of Gaussian draws leave cached values that must be captured too.
    random.gauss(0.0, 1.0), np.random.randn()
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    after_save = draw_all()
    draw_all()  # move every generator on
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert draw_all() == after_save


def test_set_rng_state_rejects_malformed() -> None:
    with pytest.raises(MbrlError, match="rng_state"):
        set_rng_state({"python": {}})


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def train_steps(
    net: TinyNet, opt: torch.optim.Optimizer, buf: ReplayBuffer, n: int, start: int
) -> None:
    """Updates touching every RNG: buffer sampling, dropout (torch), noise (numpy, random)."""
    for step in range(start, start + n):
        batch = buf.sample(32)
        noise = torch.as_tensor(np.random.normal(0.0, 0.1, 32), dtype=torch.float32)
        loss = ((net(batch.obs) - batch.rew - noise) ** 2).mean() * (1.0 + random.random())
        opt.zero_grad()
        loss.backward()
        opt.step()
        # Data keeps arriving during training, as online.
        obs = np.random.randn(3).astype(np.float32)
        buf.add(obs, np.zeros(2), float(obs.sum()), obs, step % 7 == 6, False)


def make_run(seed: int) -> tuple[TinyNet, torch.optim.Optimizer, ReplayBuffer]:
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    buf = ReplayBuffer(50, 3, 2)  # seed drawn from torch's global RNG
    for _ in range(40):
        obs = np.random.randn(3).astype(np.float32)
        buf.add(obs, np.zeros(2), float(obs.sum()), obs, False, False)
    return net, opt, buf


def test_training_resume_is_bit_identical(tmp_path: Path) -> None:
    net, opt, buf = make_run(0)
    train_steps(net, opt, buf, 20, 0)
    reference = [p.detach().clone() for p in net.parameters()]

    net, opt, buf = make_run(0)
    train_steps(net, opt, buf, 8, 0)
    save_run_checkpoint(
        tmp_path,
        8,
        {
            "model": net.state_dict(),
            "optim": opt.state_dict(),
            "buffer": buf.state_dict(),
            "rng": rng_state(),
            "step": 8,
        },
    )
    del net, opt, buf
    net, opt, buf = make_run(1)  # a different process state, then resume
    state = load_checkpoint(find_latest(tmp_path))  # type: ignore[arg-type]
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optim"])
    buf.load_state_dict(state["buffer"])
    set_rng_state(state["rng"])
    train_steps(net, opt, buf, 12, state["step"])
    for p, q in zip(net.parameters(), reference, strict=True):
        assert torch.equal(p.detach(), q)
