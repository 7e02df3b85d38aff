"""Replay buffer: storage, FIFO wrap, trajectory bookkeeping, sequences, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mbrl.data.buffer import ReplayBuffer
from mbrl.errors import MbrlError
from mbrl.types import TransitionBatch

torch.set_num_threads(1)

O, A = 3, 2


def make_stream(
    episode_lengths: list[int], truncate_flags: list[bool] | None = None, last_open: bool = False
) -> dict[str, np.ndarray]:
    """Transitions whose obs encode (global step, episode index, step in episode).

    Each episode ends with ``terminated`` or (if its flag is set) ``truncated``; with
    ``last_open`` the final episode has no end flag (still running).
    """
    rows = []
    step = 0
    for ep, length in enumerate(episode_lengths):
        for t in range(length):
            end = t == length - 1 and not (last_open and ep == len(episode_lengths) - 1)
            trunc = bool(truncate_flags[ep]) if truncate_flags else False
            rows.append((step, ep, t, end and not trunc, end and trunc))
            step += 1
    n = len(rows)
    obs = np.array([[s, e, t] for s, e, t, _, _ in rows], dtype=np.float32).reshape(n, O)
    return {
        "obs": obs,
        "act": np.stack([obs[:, 0], -obs[:, 0]], axis=1) if n else np.zeros((0, A), np.float32),
        "rew": obs[:, 0] * 0.5,
        "next_obs": obs + 1000.0,
        "terminated": np.array([r[3] for r in rows], dtype=bool),
        "truncated": np.array([r[4] for r in rows], dtype=bool),
    }


def add_stream(buf: ReplayBuffer, data: dict[str, np.ndarray], chunks: list[int]) -> None:
    """Add the stream in chunks: a chunk of size 1 goes through add(), others add_batch()."""
    i, n, k = 0, len(data["obs"]), 0
    while i < n:
        size = chunks[k % len(chunks)] if chunks else n
        k += 1
        sl = slice(i, min(i + size, n))
        if sl.stop - sl.start == 1:
            buf.add(*(data[f][sl.start] for f in data))
        else:
            buf.add_batch(*(data[f][sl] for f in data))
        i = sl.stop


def test_add_and_sample_shapes_values() -> None:
    data = make_stream([4, 3])
    buf = ReplayBuffer(100, O, A, seed=0)
    add_stream(buf, data, [1])
    assert len(buf) == 7 and not buf.is_full and buf.capacity == 100
    batch = buf.sample(64)
    assert isinstance(batch, TransitionBatch)
    assert batch.obs.shape == (64, O) and batch.act.shape == (64, A)
    assert batch.rew.shape == (64,) and batch.next_obs.shape == (64, O)
    assert batch.terminated.dtype == torch.bool and batch.truncated.shape == (64,)
    # Every sampled row is a stored row with its fields kept together.
    step = batch.obs[:, 0]
    assert set(step.long().tolist()) <= set(range(7))
    torch.testing.assert_close(batch.act[:, 0], step)
    torch.testing.assert_close(batch.rew, step * 0.5)
    torch.testing.assert_close(batch.next_obs, batch.obs + 1000.0)
    torch.testing.assert_close(batch.terminated, (step == 3) | (step == 6))


def test_sample_covers_buffer_uniformly() -> None:
    buf = ReplayBuffer(10, O, A, seed=1)
    add_stream(buf, make_stream([10]), [])
    counts = torch.bincount(buf.sample(20_000).obs[:, 0].long(), minlength=10)
    # 2000 expected per slot; 5 sigma of a binomial(20000, 0.1) is ~212.
    assert int(counts.min()) > 1780 and int(counts.max()) < 2220


def test_add_and_add_batch_and_torch_inputs_agree() -> None:
    data = make_stream([3, 5, 2], truncate_flags=[False, True, False])
    a = ReplayBuffer(6, O, A, seed=0)
    b = ReplayBuffer(6, O, A, seed=0)
    c = ReplayBuffer(6, O, A, seed=0)
    add_stream(a, data, [1])
    add_stream(b, data, [4, 3])
    add_stream(c, {k: torch.as_tensor(v) for k, v in data.items()}, [2, 1])  # type: ignore[misc]
    for other in (b, c):
        for f in ("obs", "act", "rew", "next_obs", "terminated", "truncated"):
            assert torch.equal(getattr(a.transitions(), f), getattr(other.transitions(), f))
        assert torch.equal(a.trajectory_ids(), other.trajectory_ids())
        # Same physical layout too: equal generators draw the same rows.
        a.generator.manual_seed(1), other.generator.manual_seed(1)
        assert torch.equal(a.sample(32).obs, other.sample(32).obs)


def test_fifo_wrap_and_trajectories() -> None:
    # 14 steps into capacity 10: steps 0-3 are overwritten, episode 1 loses its first step.
    data = make_stream([3, 4, 2, 5], last_open=True)
    buf = ReplayBuffer(10, O, A, seed=0)
    add_stream(buf, data, [1, 3])
    assert len(buf) == 10 and buf.is_full
    assert buf.transitions().obs[:, 0].tolist() == list(range(4, 14))
    assert buf.episode_starts().tolist() == [0, 3, 5]
    eps = [e.obs[:, 1].tolist() for e in buf.episodes()]
    assert eps == [[1.0] * 3, [2.0] * 2, [3.0] * 5]
    last = list(buf.episodes())[-1]
    assert not bool(last.terminated.any() | last.truncated.any())  # still running
    # Continuing the open episode keeps its id.
    buf.add(np.full(O, 7.0), np.zeros(A), 0.0, np.zeros(O), True, False)
    assert buf.episode_starts().tolist() == [0, 2, 4]
    assert [len(e) for e in buf.episodes()] == [2, 2, 6]


def test_add_batch_larger_than_capacity_keeps_last_rows() -> None:
    data = make_stream([6, 6])
    buf = ReplayBuffer(5, O, A, seed=0)
    buf.add(*(data[f][0] for f in data))  # ptr is now 1, not 0
    add_stream(buf, {k: v[1:] for k, v in data.items()}, [])
    assert buf.transitions().obs[:, 0].tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert len(list(buf.episodes())) == 1
    buf.add(np.zeros(O), np.zeros(A), 0.0, np.zeros(O), False, False)
    assert buf.episode_starts().tolist() == [0, 4]


def test_from_transitions_d4rl_view() -> None:
    data = make_stream([4, 3, 5], truncate_flags=[False, True, False])
    batch = TransitionBatch(**{k: torch.as_tensor(v) for k, v in data.items()})
    buf = ReplayBuffer.from_transitions(batch, seed=0)
    assert buf.capacity == 12 and buf.is_full
    assert torch.equal(buf.transitions().obs, batch.obs)
    assert buf.episode_starts().tolist() == [0, 4, 7]
    roomy = ReplayBuffer.from_transitions(batch, capacity=20)
    assert len(roomy) == 12 and not roomy.is_full
    small = ReplayBuffer.from_transitions(batch, capacity=5)
    assert small.transitions().obs[:, 0].tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]


def test_shape_errors_name_the_field() -> None:
    buf = ReplayBuffer(10, O, A)
    with pytest.raises(MbrlError, match=r"'act' has shape \(3,\), expected \(2,\)"):
        buf.add(np.zeros(O), np.zeros(3), 0.0, np.zeros(O), False, False)
    with pytest.raises(MbrlError, match=r"'obs' has shape \(1, 3\), expected \(3,\)"):
        buf.add(np.zeros((1, O)), np.zeros(A), 0.0, np.zeros(O), False, False)
    with pytest.raises(MbrlError, match=r"'rew' has shape \(4, 1\), expected \(4,\)"):
        buf.add_batch(
            np.zeros((4, O)), np.zeros((4, A)), np.zeros((4, 1)), np.zeros((4, O)),
            np.zeros(4), np.zeros(4),
        )  # fmt: skip
    with pytest.raises(MbrlError, match=r"'obs' has shape \(3,\), expected \(B, 3\)"):
        buf.add_batch(np.zeros(O), np.zeros(A), 0.0, np.zeros(O), False, False)
    assert len(buf) == 0  # nothing half-written


def test_empty_and_impossible_sampling_errors() -> None:
    buf = ReplayBuffer(10, O, A)
    with pytest.raises(MbrlError, match="empty"):
        buf.sample(4)
    with pytest.raises(MbrlError, match="empty"):
        buf.sample_sequences(4, 2)
    add_stream(buf, make_stream([3, 3]), [])
    with pytest.raises(MbrlError, match="length 4"):
        buf.sample_sequences(4, 4)
    with pytest.raises(MbrlError, match="capacity"):
        ReplayBuffer(0, O, A)


def test_seeding_reproducible_and_independent() -> None:
    data = make_stream([50])

    def draws(seed: int | None) -> torch.Tensor:
        buf = ReplayBuffer(50, O, A, seed=seed)
        add_stream(buf, data, [])
        return torch.cat([buf.sample(16).obs[:, 0], buf.sample_sequences(8, 5).obs[:, 0, 0]])

    assert torch.equal(draws(3), draws(3))
    assert not torch.equal(draws(3), draws(4))
    torch.manual_seed(0)
    first = draws(None), draws(None)
    torch.manual_seed(0)
    second = draws(None), draws(None)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], first[1])  # two buffers in one run differ


def brute_force_starts(buf: ReplayBuffer, length: int) -> list[int]:
    ep = buf.transitions().obs[:, 1].tolist()
    return [s for s in range(len(ep) - length + 1) if len(set(ep[s : s + length])) == 1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=12),
    trunc=st.lists(st.booleans(), min_size=12, max_size=12),
    last_open=st.booleans(),
    capacity=st.integers(1, 30),
    chunks=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    seq_len=st.integers(1, 6),
)
def test_sample_sequences_never_cross_boundaries(
    lengths: list[int],
    trunc: list[bool],
    last_open: bool,
    capacity: int,
    chunks: list[int],
    seq_len: int,
) -> None:
    data = make_stream(lengths, trunc, last_open)
    total = len(data["obs"])
    buf = ReplayBuffer(capacity, O, A, seed=0)
    add_stream(buf, data, chunks)
    assert len(buf) == min(total, capacity)
    expected = brute_force_starts(buf, seq_len)
    assert buf.valid_sequence_starts(seq_len).tolist() == expected
    if not expected:
        with pytest.raises(MbrlError):
            buf.sample_sequences(16, seq_len)
        return
    seq = buf.sample_sequences(64, seq_len)
    assert seq.obs.shape == (64, seq_len, O) and seq.rew.shape == (64, seq_len)
    step, ep, t = seq.obs[..., 0], seq.obs[..., 1], seq.obs[..., 2]
    assert bool((step.diff(dim=1) == 1).all())  # contiguous in time
    assert bool((t.diff(dim=1) == 1).all())  # contiguous within the episode
    assert bool((ep == ep[:, :1]).all())  # one episode
    assert bool((step >= total - capacity).all())  # never overwritten data
    ends = seq.terminated | seq.truncated
    assert not bool(ends[:, :-1].any())  # an episode end can only close a window
    torch.testing.assert_close(seq.next_obs, seq.obs + 1000.0)
    torch.testing.assert_close(seq.act[..., 0], step)


def test_sample_sequences_uniform_over_valid_starts() -> None:
    buf = ReplayBuffer(20, O, A, seed=0)
    add_stream(buf, make_stream([4, 1, 6]), [])
    # length 3: starts 0,1 (episode 0) and 5,6,7,8 (episode 2) -> 6 valid windows.
    assert buf.valid_sequence_starts(3).tolist() == [0, 1, 5, 6, 7, 8]
    first = buf.sample_sequences(12_000, 3).obs[:, 0, 0].long()
    counts = torch.bincount(first, minlength=11)
    assert counts[[2, 3, 4, 9, 10]].sum() == 0
    assert int(counts[[0, 1, 5, 6, 7, 8]].min()) > 1800  # 2000 expected each


@pytest.mark.parametrize("n_fill", [7, 23])  # not full / wrapped
def test_resume_continues_exact_sample_sequence(n_fill: int, tmp_path: Path) -> None:
    fill = {k: v[:n_fill] for k, v in make_stream([4, 5, 6, 8]).items()}
    more = make_stream([3, 2])

    def run_after(buf: ReplayBuffer) -> list[torch.Tensor]:
        out = [buf.sample(9).obs, buf.sample_sequences(4, 2).obs]
        add_stream(buf, more, [1])
        return [*out, buf.sample(9).obs, buf.sample_sequences(4, 2).obs, buf.trajectory_ids()]

    a = ReplayBuffer(12, O, A, seed=5)
    add_stream(a, fill, [5])
    a.sample(7), a.sample_sequences(3, 2)  # advance the generator before saving
    torch.save(a.state_dict(), tmp_path / "buf.pt")
    uninterrupted = run_after(a)

    b = ReplayBuffer(12, O, A, seed=123)  # different seed: the state must override it
    b.load_state_dict(torch.load(tmp_path / "buf.pt", weights_only=True))
    resumed = run_after(b)
    for x, y in zip(uninterrupted, resumed, strict=True):
        assert torch.equal(x, y)


def test_state_dict_is_compact_and_checked() -> None:
    buf = ReplayBuffer(1000, O, A, seed=0)
    add_stream(buf, make_stream([5]), [])
    state = buf.state_dict()
    assert state["obs"].shape == (5, O) and state["size"] == 5
    assert state["obs"].untyped_storage().nbytes() == 5 * O * 4  # a copy, not a view
    other = ReplayBuffer(999, O, A)
    with pytest.raises(MbrlError, match="capacity=1000"):
        other.load_state_dict(state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_buffer_samples_without_host_sync() -> None:
    data = make_stream([5, 7, 4])
    buf = ReplayBuffer(12, O, A, device="cuda", seed=0)
    cpu = ReplayBuffer(12, O, A, device="cpu", seed=0)
    add_stream(buf, data, [1, 4])
    add_stream(cpu, data, [1, 4])
    assert torch.equal(buf.transitions().obs.cpu(), cpu.transitions().obs)
    assert torch.equal(buf.trajectory_ids().cpu(), cpu.trajectory_ids())
    buf.valid_sequence_starts(3)  # fill the cache (one sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = buf.sample(64)
        seq = buf.sample_sequences(64, 3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch.obs.device.type == "cuda" and seq.obs.shape == (64, 3, O)
    step = seq.obs[..., 0]
    assert bool((step.diff(dim=1) == 1).all()) and bool(
        (seq.obs[..., 1] == seq.obs[:, :1, 1]).all()
    )
    state = buf.state_dict()
    restored = ReplayBuffer(12, O, A, device="cuda")
    restored.load_state_dict(state)
    assert torch.equal(restored.sample(16).obs, buf.sample(16).obs)


@pytest.mark.parametrize("added", [5, 8])  # exactly full, and wrapped (oldest row at ptr)
def test_state_loads_into_a_larger_buffer_oldest_first(added: int) -> None:
    small = ReplayBuffer(5, 1, 1)
    for i in range(added):
        small.add([float(i)], [0.0], float(i), [float(i + 1)], False, i % 3 == 2)
    big = ReplayBuffer(12, 1, 1)
    big.load_state_dict(small.state_dict())
    kept = list(range(added - 5, added))  # the last 5 rows, in the order they came
    assert len(big) == 5 and big.rew[:5].tolist() == [float(i) for i in kept]
    big.add([99.0], [0.0], 99.0, [100.0], False, False)  # written after them, not over
    assert len(big) == 6 and big.rew[5].item() == 99.0
    assert big.truncated[:5].tolist() == [i % 3 == 2 for i in kept]
    with pytest.raises(MbrlError, match="capacity"):
        ReplayBuffer(4, 1, 1).load_state_dict(small.state_dict())  # smaller: refused


def test_last_index_follows_the_ring() -> None:
    buf = ReplayBuffer(3, 1, 1)
    assert buf.last_index == -1
    for i in range(5):  # rows 0 1 2, then 3 -> row 0, 4 -> row 1
        buf.add([float(i)], [0.0], float(i), [0.0], False, False)
        assert buf.last_index == i % 3 and buf.rew[buf.last_index].item() == float(i)
