"""Dataset ids, download (local HTTP server), Minari adapter, info and convert."""

from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from d4rl_files import write_d4rl_file, write_minari_dataset
from rich.console import Console

import mbrl.data.datasets as datasets_mod
from mbrl.data.d4rl import load_d4rl, qlearning_view
from mbrl.data.datasets import (
    D4RL_DATASETS,
    convert,
    dataset_info,
    get_dataset_spec,
    load_dataset,
    print_info,
    resolve_dataset,
)
from mbrl.data.minari import load_minari
from mbrl.data.scores import D4RL_REF_SCORES, normalized_score
from mbrl.envs import EnvSpec
from mbrl.errors import MbrlError
from mbrl.registry import DATASETS, Entry, Registry


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty D4RL cache dir; no base-URL override from the environment."""
    d = tmp_path / "cache"
    monkeypatch.setenv("D4RL_DATASET_DIR", str(d))
    monkeypatch.delenv("D4RL_DATASET_URL_BASE", raising=False)
    return d


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving ``tmp_path / "srv"``: (base URL, folder)."""
    root = tmp_path / "srv"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


# -- ids and registry ----------------------------------------------------------------------
def test_d4rl_ids_registered_with_d4rl_file_names() -> None:
    names = [n for n in DATASETS.names() if n.startswith("d4rl:")]
    assert len(names) == 24 and set(names) == set(D4RL_DATASETS)
    spec = DATASETS.get("d4rl:hopper-medium-replay-v2").obj
    assert spec.filename == "hopper_medium_replay-v2.hdf5"
    assert spec.url == (
        "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/"
        "hopper_medium_replay-v2.hdf5"
    )
    assert (spec.env_id, spec.obs_dim, spec.act_dim) == ("Hopper-v4", 11, 3)
    assert get_dataset_spec("halfcheetah-full-replay-v2").filename == (
        "halfcheetah_full_replay-v2.hdf5"
    )
    ant = get_dataset_spec("d4rl:ant-medium-expert-v2")
    assert (ant.env_id, ant.obs_dim, ant.make_kwargs) == (
        "Ant-v4",
        111,
        {"use_contact_forces": True},
    )
    assert get_dataset_spec("walker2d-random-v2").env_id == "Walker2d-v4"


def test_unknown_id_suggests_close_match(cache: Path) -> None:
    with pytest.raises(MbrlError, match="Did you mean 'd4rl:hopper-medium-v2'"):
        resolve_dataset("d4rl:hoper-medium-v2")
    with pytest.raises(MbrlError, match="Did you mean 'walker2d-medium-v2'"):
        resolve_dataset("walker2d-medum-v2")


def test_plain_paths(tmp_path: Path, cache: Path) -> None:
    path = write_d4rl_file(tmp_path / "mine.hdf5")
    assert resolve_dataset(str(path)) == path
    with pytest.raises(MbrlError, match="neither an existing file"):
        resolve_dataset(str(tmp_path / "missing.hdf5"))


def test_cached_file_resolves_without_download(cache: Path) -> None:
    cache.mkdir()
    path = write_d4rl_file(cache / "hopper_medium-v2.hdf5")
    assert resolve_dataset("d4rl:hopper-medium-v2", download=False) == path
    assert resolve_dataset("hopper-medium-v2") == path  # the prefix is optional
    with pytest.raises(MbrlError, match="not downloaded") as err:
        resolve_dataset("d4rl:hopper-expert-v2", download=False)
    assert str(cache / "hopper_expert-v2.hdf5") in str(err.value)


# -- download ----------------------------------------------------------------------------
def test_download_from_local_server(
    cache: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = server
    src = write_d4rl_file(root / "walker2d_medium_replay-v2.hdf5", obs_dim=17, act_dim=6)
    got = resolve_dataset("d4rl:walker2d-medium-replay-v2", url_base=base, progress=False)
    assert got == cache / "walker2d_medium_replay-v2.hdf5"
    assert got.read_bytes() == src.read_bytes()
    assert [p.name for p in cache.iterdir()] == [got.name]  # no temp file left behind
    assert len(load_d4rl(got)) == 30
    # the environment variable works too
    write_d4rl_file(root / "ant_random-v2.hdf5")
    monkeypatch.setenv("D4RL_DATASET_URL_BASE", base)
    assert load_dataset("d4rl:ant-random-v2").env_id == "Ant-v4"


def test_download_errors_leave_no_file(cache: Path, server: tuple[str, Path]) -> None:
    base, root = server
    with pytest.raises(MbrlError, match="HTTP 404") as err:
        resolve_dataset("d4rl:hopper-random-v2", url_base=base, progress=False)
    assert f"{base}hopper_random-v2.hdf5" in str(err.value)
    (root / "hopper_expert-v2.hdf5").write_text("<html>not a dataset</html>")
    with pytest.raises(MbrlError, match="did not send an HDF5 file"):
        resolve_dataset("d4rl:hopper-expert-v2", url_base=base, progress=False)
    assert list(cache.iterdir()) == []  # neither the final name nor a temp file


def test_unreachable_server_fails_fast_with_instructions(cache: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with pytest.raises(MbrlError) as err:
        resolve_dataset("d4rl:halfcheetah-medium-v2", url_base=base, timeout=2.0)
    msg = str(err.value)
    assert f"{base}/halfcheetah_medium-v2.hdf5" in msg
    assert str(cache / "halfcheetah_medium-v2.hdf5") in msg and "D4RL_DATASET_DIR" in msg
    assert not (cache / "halfcheetah_medium-v2.hdf5").exists()


# -- Minari ------------------------------------------------------------------------------
def test_minari_dataset_to_d4rl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    write_minari_dataset(
        root,
        "mujoco/hopper/medium-v0",
        n_episodes=3,
        ep_len=[4, 6, 5],
        terminal_every=2,
        last_unflagged=True,
        metadata={"ref_min_score": -10.0, "ref_max_score": 90.0},
    )
    main = resolve_dataset("minari:mujoco/hopper/medium-v0")
    assert main == root / "mujoco/hopper/medium-v0/data/main_data.hdf5"
    ds = load_dataset("minari:mujoco/hopper/medium-v0")
    assert len(ds) == 15 and ds.obs_dim == 3 and ds.act_dim == 2
    assert np.flatnonzero(ds.terminals).tolist() == [9]
    assert np.flatnonzero(ds.timeouts).tolist() == [3, 14]  # the unflagged end gets one
    with h5py.File(main, "r") as f:
        obs1 = f["episode_1/observations"][()]
        rew2 = f["episode_2/rewards"][()]
    np.testing.assert_array_equal(ds.observations[4:10], obs1[:-1])
    assert ds.next_observations is not None
    np.testing.assert_array_equal(ds.next_observations[4:10], obs1[1:])
    np.testing.assert_allclose(ds.rewards[10:], rew2.astype(np.float32))
    np.testing.assert_allclose(ds.infos["qpos"][4:10], 3.0 * obs1[:-1], rtol=1e-6)
    assert ds.env_id == "Hopper-v5"
    assert ds.metadata["dataset_id"] == "mujoco/hopper/medium-v0"
    assert "observation_space" not in ds.metadata
    # qlearning view: every row, terminal rows keep their true next observation
    view = qlearning_view(ds)
    assert len(view) == 15
    np.testing.assert_array_equal(view.next_obs[9], obs1[-1])
    # a version-less id picks the highest local version; the folder loads too
    write_minari_dataset(root, "mujoco/hopper/medium-v1", n_episodes=1, ep_len=2)
    assert len(load_dataset("minari:mujoco/hopper/medium")) == 2
    assert len(load_minari(root / "mujoco/hopper/medium-v0")) == 15
    assert len(load_dataset(str(root / "mujoco/hopper/medium-v0"))) == 15


def test_minari_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(MbrlError, match="minari download mujoco/ant/expert-v0"):
        resolve_dataset("minari:mujoco/ant/expert-v0")
    folder = write_minari_dataset(tmp_path, "goal-v0", n_episodes=1, ep_len=3)
    with h5py.File(folder / "data/main_data.hdf5", "a") as f:
        del f["episode_0/observations"]
        g = f.create_group("episode_0/observations")
        g.create_dataset("achieved_goal", data=np.zeros((4, 2)))
    with pytest.raises(MbrlError, match="episode_0/observations' is a group"):
        load_dataset("minari:goal-v0")
    folder = write_minari_dataset(tmp_path, "short-v0", n_episodes=2, ep_len=3)
    with h5py.File(folder / "data/main_data.hdf5", "a") as f:
        del f["episode_1/actions"]
        f.create_dataset("episode_1/actions", data=np.zeros((2, 2)))
    with pytest.raises(MbrlError, match="episode_1/actions' has 2 rows"):
        load_dataset("minari:short-v0")


# -- info --------------------------------------------------------------------------------
@pytest.fixture
def envs(monkeypatch: pytest.MonkeyPatch) -> Registry[EnvSpec]:
    """A private env registry with declared dims, independent of the built-in envs."""
    reg: Registry[EnvSpec] = Registry("env")
    for env_id, o, a in [("HalfCheetah-v4", 17, 6), ("Walker2d-v4", 17, 6), ("Hopper-v4", 11, 3)]:
        reg.add(Entry(name=env_id, obj=EnvSpec(id=env_id, obs_dim=o, act_dim=a)))
    monkeypatch.setattr(datasets_mod, "ENVS", reg)
    return reg


def test_dataset_info_counts_scores_and_env(tmp_path: Path, envs: Registry[EnvSpec]) -> None:
    path = write_d4rl_file(
        tmp_path / "hopper_medium-v2.hdf5",
        n_episodes=4,
        ep_len=[5, 7, 3, 6],
        obs_dim=11,
        act_dim=3,
        terminal_every=2,
        partial_tail=4,
        metadata={"algorithm": "SAC"},
        policy_weights=True,
    )
    info = dataset_info(str(path))
    assert (info.n_transitions, info.obs_dim, info.act_dim) == (25, 11, 3)
    assert info.format == "d4rl-hdf5" and info.size_bytes == path.stat().st_size
    s = info.stats
    assert (s.n_episodes, s.n_terminal, s.n_timeout, s.n_partial) == (5, 2, 2, 1)
    assert (s.length_min, s.length_max) == (3, 7)
    ds = load_d4rl(path)
    rets = [
        float(ds.rewards[a:b].astype(np.float64).sum())
        for a, b in [(0, 5), (5, 12), (12, 15), (15, 21)]
    ]
    assert s.return_mean == pytest.approx(np.mean(rets))
    assert info.ref_scores == D4RL_REF_SCORES["hopper"]
    assert info.normalized_return_mean == pytest.approx(
        normalized_score(float(np.mean(rets)), *D4RL_REF_SCORES["hopper"])
    )
    assert (info.env_id, info.env_matches, info.env_match_by) == (
        "Hopper-v4",
        ["Hopper-v4"],
        "file name",
    )
    assert info.metadata == {"algorithm": "SAC"}
    assert info.metadata_skipped == {"policy/fc0/weight": (64, 64)}
    assert "observations" in info.keys and info.has_next_observations


def test_env_match_by_metadata_and_ambiguous_dims(tmp_path: Path, envs: Registry[EnvSpec]) -> None:
    plain = write_d4rl_file(tmp_path / "data.hdf5", obs_dim=17, act_dim=6)
    info = dataset_info(plain)
    assert info.env_matches == ["HalfCheetah-v4", "Walker2d-v4"]
    assert info.env_match_by == "obs/act dims"
    assert info.ref_scores is None and info.normalized_return_mean is None
    tagged = write_d4rl_file(
        tmp_path / "tagged.hdf5",
        obs_dim=17,
        act_dim=6,
        metadata={"env_id": "Walker2d-v4", "ref_min_score": 0.0, "ref_max_score": 10.0},
    )
    info = dataset_info(tagged)
    assert (info.env_matches, info.env_match_by) == (["Walker2d-v4"], "metadata")
    assert info.ref_scores == (0.0, 10.0)  # the file's own scores beat the table
    odd = write_d4rl_file(tmp_path / "odd.hdf5", obs_dim=5, act_dim=1)
    assert dataset_info(odd).env_matches == []


def test_print_info(tmp_path: Path, envs: Registry[EnvSpec]) -> None:
    path = write_d4rl_file(
        tmp_path / "halfcheetah_random-v2.hdf5", obs_dim=17, act_dim=6, partial_tail=2
    )
    console = Console(record=True, width=160)
    info = print_info(str(path), console=console)
    out = console.export_text()
    assert "32" in out and "17 / 6" in out and "HalfCheetah-v4 (by file name)" in out
    assert "4 (0 terminal, 3 timeout, 1 trailing partial)" in out
    assert f"{info.normalized_return_mean:,.1f}" in out


# -- convert -----------------------------------------------------------------------------
def test_convert_round_trips(tmp_path: Path) -> None:
    src = write_d4rl_file(tmp_path / "src.hdf5", terminal_every=2, metadata={"algorithm": "SAC"})
    npz = convert(str(src), tmp_path / "out.npz")
    back = convert(npz, tmp_path / "back.hdf5")
    a, b = load_d4rl(src), load_d4rl(back)
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert b.metadata == {"algorithm": "SAC"}
    with h5py.File(back, "r") as f:
        assert f["observations"].compression == "gzip"
        assert {"observations", "actions", "rewards", "terminals", "timeouts"} <= set(f)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.hdf5", "out.npz", "src.hdf5"]


def test_convert_refuses_overwrites(tmp_path: Path) -> None:
    src = write_d4rl_file(tmp_path / "src.hdf5")
    before = src.read_bytes()
    with pytest.raises(MbrlError, match="is the source"):
        convert(src, src, overwrite=True)
    dst = tmp_path / "dst.npz"
    dst.write_bytes(b"old")
    with pytest.raises(MbrlError, match="already exists"):
        convert(src, dst)
    assert dst.read_bytes() == b"old"
    convert(src, dst, overwrite=True)
    assert len(load_dataset(dst)) == 30
    with pytest.raises(MbrlError, match=r"unknown format '\.csv'"):
        convert(src, tmp_path / "x.csv")
    assert src.read_bytes() == before


def test_convert_minari_to_d4rl(tmp_path: Path) -> None:
    folder = write_minari_dataset(tmp_path / "m", "pen-v0", n_episodes=2, ep_len=[3, 4])
    out = convert(folder, tmp_path / "pen.hdf5")
    ds = load_d4rl(out)
    assert len(ds) == 7 and ds.next_observations is not None
    assert np.flatnonzero(ds.timeouts).tolist() == [2, 6]
    assert ds.metadata["env_id"] == "Hopper-v5"
    assert json.loads(json.dumps(ds.metadata))  # plain values only
