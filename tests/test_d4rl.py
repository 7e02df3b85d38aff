"""D4RL-format loader: counts, validation, read-only access, Q-learning and trajectory views."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from d4rl_files import make_d4rl_arrays, write_arrays, write_d4rl_file
from hypothesis import given, settings
from hypothesis import strategies as st

from mbrl.data.d4rl import (
    D4RLDataset,
    check_dims,
    episode_bounds,
    episode_stats,
    load_d4rl,
    load_npz,
    qlearning_view,
    rebuild_timeouts,
    save_d4rl,
    save_npz,
    to_transition_batch,
    trajectories,
)
from mbrl.errors import MbrlError
from mbrl.types import TransitionBatch

# Episodes of 5, 7, 3, 6 rows (episodes 1 and 3 terminal, 0 and 2 timeout) + 4 tail rows.
LENGTHS = [5, 7, 3, 6]
N = sum(LENGTHS) + 4  # 25
TIMEOUT_ROWS = [4, 14]
TERMINAL_ROWS = [11, 20]


def _file(tmp_path: Path, *, with_next_obs: bool = True, **kw: object) -> Path:
    return write_d4rl_file(
        tmp_path / "hopper_medium-v2.hdf5",
        n_episodes=4,
        ep_len=LENGTHS,
        obs_dim=3,
        act_dim=2,
        terminal_every=2,
        partial_tail=4,
        with_next_obs=with_next_obs,
        **kw,
    )


def test_load_counts_dtypes_and_metadata(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        metadata={"algorithm": "SAC", "iteration": 3, "ref_min_score": -1.5},
        policy_weights=True,
    )
    ds = load_d4rl(path)
    assert len(ds) == N and ds.obs_dim == 3 and ds.act_dim == 2
    assert ds.observations.dtype == np.float32 and ds.actions.dtype == np.float32
    assert ds.rewards.dtype == np.float32 and ds.rewards.shape == (N,)
    assert ds.terminals.dtype == np.bool_ and ds.timeouts.dtype == np.bool_
    assert np.flatnonzero(ds.terminals).tolist() == TERMINAL_ROWS
    assert np.flatnonzero(ds.timeouts).tolist() == TIMEOUT_ROWS
    assert ds.next_observations is not None and ds.next_observations.shape == (N, 3)
    assert ds.infos["qpos"].shape == (N, 3) and ds.infos["qvel"].shape == (N, 2)
    np.testing.assert_allclose(ds.infos["qpos"], 2.0 * ds.observations, rtol=1e-6)
    assert ds.metadata == {"algorithm": "SAC", "iteration": 3, "ref_min_score": -1.5}
    assert ds.metadata_skipped == {"policy/fc0/weight": (64, 64)}
    assert ds.env_id == "Hopper-v4"  # from the file name
    assert ds.path == path
    assert "metadata/policy/fc0/weight" in ds.keys and "infos/qpos" in ds.keys


def test_metadata_env_name_and_attributes(tmp_path: Path) -> None:
    arrays = make_d4rl_arrays(n_episodes=2, ep_len=4)
    path = write_arrays(tmp_path / "data.hdf5", arrays, metadata={"env_name": "walker2d-medium-v2"})
    with h5py.File(path, "a") as f:
        f.attrs["author"] = "me"
        f["metadata"].attrs["seed"] = 7
    ds = load_d4rl(path, load_infos=False)
    assert ds.env_id == "Walker2d-v4"
    assert ds.metadata["author"] == "me" and ds.metadata["seed"] == 7
    assert ds.infos == {}


def test_rewards_n_by_1_accepted(tmp_path: Path) -> None:
    arrays = make_d4rl_arrays(n_episodes=2, ep_len=4)
    arrays["rewards"] = arrays["rewards"][:, None]
    ds = load_d4rl(write_arrays(tmp_path / "r.hdf5", arrays))
    assert ds.rewards.shape == (8,)


def test_file_is_opened_read_only(tmp_path: Path) -> None:
    path = _file(tmp_path, policy_weights=True)
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    os.chmod(path, 0o444)  # a write attempt would fail loudly
    ds = load_d4rl(path)
    qlearning_view(ds)
    trajectories(ds)
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime


# -- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "terminals", "timeouts"])
def test_missing_required_key(tmp_path: Path, key: str) -> None:
    arrays = make_d4rl_arrays(n_episodes=2, ep_len=4)
    del arrays[key]
    path = write_arrays(tmp_path / "m.hdf5", arrays)
    with pytest.raises(MbrlError, match=key) as err:
        load_d4rl(path)
    assert str(path) in str(err.value)


def test_missing_timeouts_rebuilt_from_max_episode_steps(tmp_path: Path) -> None:
    arrays = make_d4rl_arrays(n_episodes=1, ep_len=9, terminal_every=1)  # terminal at row 8
    arrays["terminals"] = np.zeros(9, dtype=bool)
    arrays["terminals"][4] = True
    del arrays["timeouts"]
    path = write_arrays(tmp_path / "v0.hdf5", arrays)
    with pytest.raises(MbrlError, match="max_episode_steps"):
        load_d4rl(path)
    ds = load_d4rl(path, max_episode_steps=2)
    # episodes: rows 0-4 (terminal at 4), then 5.. ; timeouts every 2nd step of each
    assert np.flatnonzero(ds.timeouts).tolist() == [1, 3, 6, 8]
    assert rebuild_timeouts(np.zeros(5, dtype=bool), 5).tolist() == [0, 0, 0, 0, 1]


def test_unequal_lengths_name_keys_and_lengths(tmp_path: Path) -> None:
    arrays = make_d4rl_arrays(n_episodes=2, ep_len=5)
    arrays["actions"] = arrays["actions"][:7]
    with pytest.raises(MbrlError, match="unequal lengths") as err:
        load_d4rl(write_arrays(tmp_path / "u.hdf5", arrays))
    assert "actions=7" in str(err.value) and "observations=10" in str(err.value)


@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "next_observations"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_name_key_and_row(tmp_path: Path, key: str, bad: float) -> None:
    arrays = make_d4rl_arrays(n_episodes=2, ep_len=5)
    arrays[key] = arrays[key].copy()
    arrays[key][7] = bad
    arrays[key][9] = bad
    with pytest.raises(MbrlError, match=rf"'{key}'.*first bad row 7, 2 bad rows"):
        load_d4rl(write_arrays(tmp_path / "nan.hdf5", arrays))


@pytest.mark.parametrize(
    ("key", "shape"), [("observations", (10,)), ("actions", (10, 2, 1)), ("terminals", (10, 2))]
)
def test_wrong_ndim(tmp_path: Path, key: str, shape: tuple[int, ...]) -> None:
    arrays = make_d4rl_arrays(n_episodes=2, ep_len=5)
    arrays[key] = np.zeros(shape, dtype=np.float32)
    with pytest.raises(MbrlError, match=rf"'{key}' has shape"):
        load_d4rl(write_arrays(tmp_path / "ndim.hdf5", arrays))


def test_next_observations_width_mismatch(tmp_path: Path) -> None:
    arrays = make_d4rl_arrays(n_episodes=2, ep_len=5)
    arrays["next_observations"] = arrays["next_observations"][:, :2]
    with pytest.raises(MbrlError, match="next_observations has 2 columns"):
        load_d4rl(write_arrays(tmp_path / "w.hdf5", arrays))


def test_infos_with_wrong_length(tmp_path: Path) -> None:
    arrays = make_d4rl_arrays(n_episodes=2, ep_len=5)
    arrays["infos/qpos"] = arrays["infos/qpos"][:3]
    with pytest.raises(MbrlError, match="infos/qpos"):
        load_d4rl(write_arrays(tmp_path / "i.hdf5", arrays))


def test_not_hdf5_truncated_and_missing_files(tmp_path: Path) -> None:
    text = tmp_path / "page.hdf5"
    text.write_text("<html>404 not found</html>")
    with pytest.raises(MbrlError, match="not an HDF5 file"):
        load_d4rl(text)
    full = _file(tmp_path)
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(MbrlError, match=r"cut\.hdf5"):
        load_d4rl(cut)
    with pytest.raises(MbrlError, match="does not exist"):
        load_d4rl(tmp_path / "nope.hdf5")
    with pytest.raises(MbrlError, match="not a file"):
        load_d4rl(tmp_path)


def test_check_dims(tmp_path: Path) -> None:
    ds = load_d4rl(_file(tmp_path))
    check_dims(ds, 3, 2, "Hopper-v4")
    with pytest.raises(MbrlError, match=r"obs_dim=3, act_dim=2 .* 'Hopper-v4' has obs_dim=11"):
        check_dims(ds, 11, 3, "Hopper-v4")


# -- Q-learning view -------------------------------------------------------------------------
def test_qlearning_view_with_next_observations(tmp_path: Path) -> None:
    ds = load_d4rl(_file(tmp_path))
    assert ds.next_observations is not None
    view = qlearning_view(ds)
    assert len(view) == N and view.index.tolist() == list(range(N))
    np.testing.assert_array_equal(view.next_obs, ds.next_observations)
    assert view.next_obs_known.all()
    # terminal row 11: the stored next state, not the next episode's first observation
    assert not np.allclose(view.next_obs[11], ds.observations[12])
    np.testing.assert_allclose(
        view.next_obs[11], ds.observations[11] + 0.1 * np.r_[ds.actions[11], 0]
    )
    # timeout rows are kept and marked truncated, not terminated
    assert view.truncated[TIMEOUT_ROWS].all() and not view.terminated[TIMEOUT_ROWS].any()
    assert view.terminated[TERMINAL_ROWS].all()
    assert view.truncated.sum() == 2 and view.terminated.sum() == 2


def test_qlearning_view_without_next_observations(tmp_path: Path) -> None:
    ds = load_d4rl(_file(tmp_path, with_next_obs=False))
    assert ds.next_observations is None
    view = qlearning_view(ds)
    # d4rl drops the timeout rows 4 and 14 and the final row 24; terminal rows stay
    dropped = [4, 14, N - 1]
    assert view.index.tolist() == [i for i in range(N) if i not in dropped]
    assert len(view) == N - 3
    assert not view.truncated.any()
    at = {int(i): j for j, i in enumerate(view.index)}
    np.testing.assert_array_equal(view.next_obs[at[3]], ds.observations[4])
    np.testing.assert_array_equal(view.next_obs[at[21]], ds.observations[22])
    for row in TERMINAL_ROWS:  # kept, flagged, next_obs a placeholder copy of obs
        j = at[row]
        assert view.terminated[j] and not view.next_obs_known[j]
        np.testing.assert_array_equal(view.next_obs[j], ds.observations[row])
    model_rows = view.subset(view.next_obs_known)
    assert len(model_rows) == N - 3 - 2 and not model_rows.terminated.any()


def test_to_transition_batch(tmp_path: Path) -> None:
    view = qlearning_view(load_d4rl(_file(tmp_path)))
    batch = to_transition_batch(view, "cpu")
    assert isinstance(batch, TransitionBatch) and len(batch) == N
    assert batch.obs.dtype == torch.float32 and batch.obs.shape == (N, 3)
    assert batch.act.shape == (N, 2) and batch.rew.shape == (N,)
    assert batch.terminated.dtype == torch.bool and int(batch.terminated.sum()) == 2
    assert batch.truncated.dtype == torch.bool and int(batch.truncated.sum()) == 2
    torch.testing.assert_close(batch.next_obs, torch.from_numpy(view.next_obs))


# -- trajectories -------------------------------------------------------------------------
def test_trajectories_and_stats(tmp_path: Path) -> None:
    ds = load_d4rl(_file(tmp_path))
    eps = trajectories(ds)
    assert [len(e) for e in eps] == [*LENGTHS, 4]
    assert [e.start for e in eps] == [0, 5, 12, 15, 21]
    assert [e.is_terminal for e in eps] == [False, True, False, True, False]
    assert [e.is_timeout for e in eps] == [True, False, True, False, False]
    assert [e.complete for e in eps] == [True, True, True, True, False]
    assert not eps[-1].terminated.any() and not eps[-1].truncated.any()
    assert eps[1].ret == pytest.approx(float(ds.rewards[5:12].astype(np.float64).sum()))
    stats = episode_stats(ds)
    assert (stats.n_episodes, stats.n_terminal, stats.n_timeout, stats.n_partial) == (5, 2, 2, 1)
    assert (stats.length_min, stats.length_mean, stats.length_max) == (3, 5.25, 7)
    rets = np.array([e.ret for e in eps[:4]])
    assert stats.return_mean == pytest.approx(rets.mean())
    assert stats.return_std == pytest.approx(rets.std())
    assert stats.return_min == pytest.approx(rets.min())
    assert stats.return_max == pytest.approx(rets.max())


def test_trajectories_without_next_observations(tmp_path: Path) -> None:
    ds = load_d4rl(_file(tmp_path, with_next_obs=False))
    for ep in trajectories(ds):
        assert not ep.next_obs_known
        np.testing.assert_array_equal(ep.next_obs[:-1], ep.obs[1:])
        np.testing.assert_array_equal(ep.next_obs[-1], ep.obs[-1])


# -- round trips ---------------------------------------------------------------------------
def test_save_d4rl_and_npz_round_trip(tmp_path: Path) -> None:
    ds = load_d4rl(_file(tmp_path, metadata={"algorithm": "SAC", "iteration": 3}))
    h5 = save_d4rl(ds, tmp_path / "copy.hdf5")
    with h5py.File(h5, "r") as f:
        assert f["observations"].compression == "gzip"
        assert f["metadata/algorithm"][()] == b"SAC"
    npz = save_npz(ds, tmp_path / "copy.npz")
    for back in (load_d4rl(h5), load_npz(npz)):
        for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(getattr(back, key), getattr(ds, key))
        np.testing.assert_array_equal(back.next_observations, ds.next_observations)
        np.testing.assert_array_equal(back.infos["qpos"], ds.infos["qpos"])
        assert back.metadata == {"algorithm": "SAC", "iteration": 3}
    with pytest.raises(MbrlError, match="already exists"):
        save_npz(ds, npz)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "copy.hdf5",
        "copy.npz",
        "hopper_medium-v2.hdf5",
    ]


# -- property tests ------------------------------------------------------------------------
def _flags() -> st.SearchStrategy[tuple[list[bool], list[bool]]]:
    return st.integers(1, 60).flatmap(
        lambda n: st.tuples(
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.lists(st.booleans(), min_size=n, max_size=n),
        )
    )


def _coded_dataset(terminals: list[bool], timeouts: list[bool], with_next: bool) -> D4RLDataset:
    """obs[i] = (i, episode of i): a next_obs reveals its source row and episode."""
    term, tout = np.array(terminals), np.array(timeouts)
    n = term.shape[0]
    episode = np.concatenate([[0], np.cumsum(term | tout)[:-1]])
    obs = np.stack([np.arange(n), episode], axis=1).astype(np.float32)
    arrays = {
        "observations": obs,
        "actions": np.zeros((n, 1), np.float32),
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": term,
        "timeouts": tout,
    }
    if with_next:
        arrays["next_observations"] = obs + np.float32(0.5)
    return D4RLDataset.from_arrays(arrays, where="test")


@settings(max_examples=200, deadline=None)
@given(_flags())
def test_property_trajectories_partition_rows(flags: tuple[list[bool], list[bool]]) -> None:
    terminals, timeouts = flags
    ds = _coded_dataset(terminals, timeouts, with_next=False)
    n = len(ds)
    eps = trajectories(ds)
    assert sum(len(e) for e in eps) == n
    rows = np.concatenate([e.obs[:, 0] for e in eps])
    np.testing.assert_array_equal(rows, np.arange(n))  # in order, no gaps or repeats
    flag = ds.terminals | ds.timeouts
    for e in eps:
        last = e.start + len(e) - 1
        assert flag[last] or last == n - 1  # ends exactly at a flag or the file end
        assert not flag[e.start : last].any()  # no flag inside an episode
        assert e.complete == bool(flag[last])
        assert len(set(e.obs[:, 1].tolist())) == 1
    bounds = episode_bounds(ds.terminals, ds.timeouts)
    assert bounds[:, 0].tolist() == [e.start for e in eps]


def _d4rl_qlearning_rows(terminals: list[bool], timeouts: list[bool]) -> list[int]:
    """Rows d4rl's qlearning_dataset keeps (use_timeouts=True, terminate_on_end=False)."""
    return [i for i in range(len(terminals) - 1) if not timeouts[i]]


@settings(max_examples=200, deadline=None)
@given(_flags())
def test_property_qlearning_view_never_crosses_episodes(
    flags: tuple[list[bool], list[bool]],
) -> None:
    terminals, timeouts = flags
    ds = _coded_dataset(terminals, timeouts, with_next=False)
    view = qlearning_view(ds)
    n = len(ds)
    known = view.next_obs_known
    # a known next_obs is the next row's obs, in the same episode
    np.testing.assert_array_equal(view.next_obs[known, 0], view.index[known] + 1)
    np.testing.assert_array_equal(view.next_obs[known, 1], view.obs[known, 1])
    # unknown ones are exactly the terminal rows, and they point at themselves
    np.testing.assert_array_equal(~known, view.terminated)
    np.testing.assert_array_equal(view.next_obs[~known, 0], view.index[~known])
    # the rows are d4rl's, plus terminal rows d4rl drops (terminal & timeout, or last row)
    extra = [i for i in range(n) if terminals[i] and (timeouts[i] or i == n - 1)]
    assert view.index.tolist() == sorted(_d4rl_qlearning_rows(terminals, timeouts) + extra)
    np.testing.assert_array_equal(view.rew, view.index.astype(np.float32))

    with_next = qlearning_view(_coded_dataset(terminals, timeouts, with_next=True))
    assert with_next.index.tolist() == list(range(n))
    np.testing.assert_array_equal(with_next.next_obs, with_next.obs + np.float32(0.5))
    np.testing.assert_array_equal(with_next.truncated, np.array(timeouts))
