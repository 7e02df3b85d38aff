"""`mbrl data collect`: D4RL-protocol datasets generated from a behaviour SAC.

A tiny budget on InvertedPendulum-v5 (terminates; obs = [qpos, qvel]) and PointMass1D-v0
(never terminates, 30-step time limit) keeps the whole file to a few seconds.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mbrl.data.d4rl as d4rl_mod
import mbrl.data.generate as gen
from mbrl.cli import main
from mbrl.data.d4rl import D4RLDataset, episode_bounds, load_d4rl
from mbrl.data.datasets import dataset_info
from mbrl.data.generate import CollectConfig, collect, dataset_path
from mbrl.envs import get_env_spec
from mbrl.errors import MbrlError

ENV = "InvertedPendulum-v5"
TINY_SAC = {"batch_size": 32, "hidden_sizes": (32, 32)}


def tiny(out: Path, **kw: Any) -> CollectConfig:
    base: dict[str, Any] = dict(
        env=ENV,
        out=out,
        kinds=gen.KINDS,
        behavior_steps=300,
        size=400,
        checkpoint_every=100,
        learning_starts=50,
        eval_episodes=2,
        ref_episodes=3,
        progress=False,
        sac=TINY_SAC,
    )
    base.update(kw)
    return CollectConfig(**base)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[CollectConfig, dict[str, Path]]:
    cfg = tiny(tmp_path_factory.mktemp("collect"))
    return cfg, collect(cfg, log=lambda msg: None)


def evals(cfg: CollectConfig) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((cfg.out / "behavior" / "evals.json").read_text())
    return data


def refs(cfg: CollectConfig) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((cfg.out / "behavior" / "refs.json").read_text())
    return data


def check_episodes(ds: D4RLDataset, max_steps: int) -> None:
    """Flags only on episode ends, never both, lengths within the time limit, next_obs
    equal to the next row's obs inside every episode, terminal rows really terminal."""
    assert not (ds.terminals & ds.timeouts).any()
    assert ds.next_observations is not None
    for start, end in episode_bounds(ds.terminals, ds.timeouts):
        flags = ds.terminals[start:end] | ds.timeouts[start:end]
        assert not flags[:-1].any()
        assert end - start <= max_steps
        np.testing.assert_array_equal(
            ds.next_observations[start : end - 1], ds.observations[start + 1 : end]
        )
        if ds.timeouts[end - 1]:
            assert end - start == max_steps or ds.metadata["kind"] in (
                "medium-expert",
                "medium-replay",
            )
    # InvertedPendulum terminates exactly when |angle| > 0.2 (or non-finite).
    angle_out = np.abs(ds.next_observations[:, 1]) > 0.2
    np.testing.assert_array_equal(ds.terminals, angle_out)
    # infos/qpos, infos/qvel: the state before the step; the obs is [qpos, qvel].
    state = np.concatenate([ds.infos["qpos"], ds.infos["qvel"]], axis=1)
    np.testing.assert_allclose(state, ds.observations, atol=1e-6)


def test_files_read_back_with_counts_and_boundaries(
    generated: tuple[CollectConfig, dict[str, Path]],
) -> None:
    cfg, paths = generated
    assert list(paths) == list(gen.KINDS)
    ev = evals(cfg)
    assert [e["step"] for e in ev] == [100, 200, 300]
    loaded = {kind: load_d4rl(path) for kind, path in paths.items()}
    medium_step = loaded["medium"].metadata["policy_step"]
    expected = {
        "random": cfg.size,
        "medium": cfg.size,
        "expert": cfg.size,
        "medium-replay": medium_step,
        "medium-expert": 2 * cfg.size,
    }
    for kind, ds in loaded.items():
        assert len(ds) == expected[kind], kind
        assert ds.env_id == ENV
        check_episodes(ds, max_steps=1000)
    me, med, exp = loaded["medium-expert"], loaded["medium"], loaded["expert"]
    np.testing.assert_array_equal(
        me.observations, np.concatenate([med.observations, exp.observations])
    )
    # medium's last (cut) episode ends where expert's data begins
    assert me.terminals[cfg.size - 1] or me.timeouts[cfg.size - 1]
    # random data: uniform actions over the whole box [-3, 3]
    act = loaded["random"].actions
    assert act.min() < -2.5 and act.max() > 2.5 and np.abs(act).max() <= 3.0


def test_policy_choice_metadata_and_reference_scores(
    generated: tuple[CollectConfig, dict[str, Path]],
) -> None:
    cfg, paths = generated
    ev, rf = evals(cfg), refs(cfg)
    best = max(ev, key=lambda e: e["return"])
    target = rf["ref_min_score"] + (best["return"] - rf["ref_min_score"]) / 3
    medium = min(ev, key=lambda e: (abs(e["return"] - target), e["step"]))
    assert rf["ref_max_policy_step"] == best["step"]
    assert rf["ref_max_score"] > rf["ref_min_score"]
    for kind, path in paths.items():
        meta = load_d4rl(path).metadata
        assert meta["env_id"] == ENV and meta["env_version"] == 5
        assert meta["max_episode_steps"] == 1000
        assert meta["kind"] == kind
        assert meta["gymnasium_version"] and meta["mujoco_version"]
        assert meta["behavior_steps"] == 300 and meta["behavior_seed"] == cfg.seed
        assert meta["ref_min_score"] == pytest.approx(rf["ref_min_score"])
        assert meta["ref_max_score"] == pytest.approx(rf["ref_max_score"])
        assert meta["size"] == len(load_d4rl(path))
        info = dataset_info(path)
        assert info.ref_scores == pytest.approx((rf["ref_min_score"], rf["ref_max_score"]))
        assert info.env_matches == [ENV]
    assert load_d4rl(paths["medium"]).metadata["policy_step"] == medium["step"]
    assert load_d4rl(paths["medium"]).metadata["policy_eval_return"] == pytest.approx(
        medium["return"]
    )
    assert load_d4rl(paths["expert"]).metadata["policy_step"] == best["step"]
    assert load_d4rl(paths["random"]).metadata["policy"] == "uniform random"


def test_medium_replay_is_the_behaviour_replay_buffer_in_order(
    generated: tuple[CollectConfig, dict[str, Path]],
) -> None:
    cfg, paths = generated
    ds = load_d4rl(paths["medium-replay"])
    n = len(ds)
    final = cfg.out / "behavior" / f"buffer_{cfg.behavior_steps:09d}.pkl"
    with open(final, "rb") as fh:
        buf = pickle.load(fh)
    # capacity == behavior_steps: full, never overwritten, rows in env-step order
    assert buf.full and buf.pos == 0
    np.testing.assert_allclose(buf.observations[:n, 0], ds.observations, atol=1e-6)
    assert ds.next_observations is not None
    np.testing.assert_allclose(buf.next_observations[:n, 0], ds.next_observations, atol=1e-6)
    np.testing.assert_allclose(buf.rewards[:n, 0], ds.rewards)
    # SAC stores actions rescaled to [-1, 1]; InvertedPendulum's bounds are [-3, 3].
    np.testing.assert_allclose(buf.actions[:n, 0] * 3.0, ds.actions, atol=1e-5)
    dones = buf.dones[:n, 0].astype(bool)
    cut = buf.timeouts[:n, 0].astype(bool)
    np.testing.assert_array_equal(ds.terminals, dones & ~cut)


def test_same_seed_same_checkpoint_gives_identical_data(
    generated: tuple[CollectConfig, dict[str, Path]],
) -> None:
    cfg, paths = generated
    spec = get_env_spec(ENV)
    run = gen.BehaviorRun(cfg, spec, log=lambda msg: None)
    rf = refs(cfg)
    for kind in ("random", "medium"):
        again = gen.build_dataset(cfg, spec, kind, run, rf, {})
        saved = load_d4rl(paths[kind])
        for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
            np.testing.assert_array_equal(getattr(again, key), getattr(saved, key), err_msg=key)
    medium = load_d4rl(paths["medium"])
    other = gen.build_dataset(replace(cfg, seed=cfg.seed + 7), spec, "medium", run, rf, {})
    assert not np.array_equal(other.actions, medium.actions)
    # actions are sampled around the policy's mean action, not the mean itself
    model = gen._load_sac(run.ckpt_path(medium.metadata["policy_step"]))
    mean_act, _ = model.predict(medium.observations[:200], deterministic=True)
    gap = np.abs(mean_act - medium.actions[:200])
    assert gap.mean() > 1e-3 and np.abs(medium.actions).max() <= 3.0


def test_interrupted_training_resumes_and_finished_files_are_skipped(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, kinds=("medium-replay", "medium"))
    original = gen.BehaviorRun.checkpoint

    def crash_after_200(self: gen.BehaviorRun, model: Any, rec: Any, rate: float) -> None:
        original(self, model, rec, rate)
        if model.num_timesteps == 200:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gen.BehaviorRun, "checkpoint", crash_after_200)
        with pytest.raises(KeyboardInterrupt):
            collect(cfg, log=lambda msg: None)
    assert [e["step"] for e in evals(cfg)] == [100, 200]
    assert not any(dataset_path(tmp_path, ENV, k).exists() for k in cfg.kinds)

    messages: list[str] = []
    collect(cfg, log=messages.append)
    assert "behaviour SAC: resuming from step 200" in messages
    assert [e["step"] for e in evals(cfg)] == [100, 200, 300]
    ds = load_d4rl(dataset_path(tmp_path, ENV, "medium-replay"))
    assert len(ds) == ds.metadata["policy_step"]
    check_episodes(ds, max_steps=1000)
    # The episode the crash cut (training restarts with a reset) is marked as cut.
    arrays, _ = gen.BehaviorRun(cfg, get_env_spec(ENV), log=lambda msg: None).replay(300)
    assert arrays["terminals"][199] or arrays["timeouts"][199]
    inside = ~(arrays["terminals"] | arrays["timeouts"])[:-1]
    np.testing.assert_array_equal(
        arrays["next_observations"][:-1][inside], arrays["observations"][1:][inside]
    )

    stamps = {k: dataset_path(tmp_path, ENV, k).stat().st_mtime_ns for k in cfg.kinds}
    messages.clear()
    collect(cfg, log=messages.append)
    assert "behaviour SAC: done (300 steps), skipping training" in messages
    assert sum("exists, skipping" in m for m in messages) == 2
    assert stamps == {k: dataset_path(tmp_path, ENV, k).stat().st_mtime_ns for k in cfg.kinds}


def test_larger_behavior_budget_extends_training_once_stale_files_are_gone(
    tmp_path: Path,
) -> None:
    short = tiny(tmp_path, kinds=("medium-replay",), behavior_steps=200)
    collect(short, log=lambda msg: None)
    longer = replace(short, behavior_steps=300)
    with pytest.raises(MbrlError, match="datasets from the shorter run exist"):
        collect(longer, log=lambda msg: None)
    dataset_path(tmp_path, ENV, "medium-replay").unlink()
    messages: list[str] = []
    collect(longer, log=messages.append)
    assert "behaviour SAC: resuming from step 200" in messages
    assert [e["step"] for e in evals(longer)] == [100, 200, 300]
    with open(tmp_path / "behavior" / "buffer_000000300.pkl", "rb") as fh:
        buf = pickle.load(fh)
    assert buf.buffer_size == 300 and buf.full  # grown, nothing overwritten
    arrays, _ = gen.BehaviorRun(longer, get_env_spec(ENV), log=lambda msg: None).replay(300)
    np.testing.assert_allclose(buf.observations[:, 0], arrays["observations"], atol=1e-6)
    meta = load_d4rl(dataset_path(tmp_path, ENV, "medium-replay")).metadata
    assert meta["behavior_steps"] == 300 and refs(longer)["ref_max_policy_step"] in (100, 200, 300)
    with pytest.raises(MbrlError, match="other settings"):  # shrinking is not extending
        collect(replace(short, behavior_steps=250), log=lambda msg: None)


def test_crash_while_writing_leaves_no_file_under_the_final_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = CollectConfig(
        env="PointMass1D-v0",
        out=tmp_path,
        kinds=("random",),
        behavior_steps=0,
        size=100,
        progress=False,
    )

    def crash(value: Any) -> Any:  # called after the main arrays were written
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(d4rl_mod, "_metadata_value", crash)
    with pytest.raises(OSError, match="simulated"):
        collect(cfg, log=lambda msg: None)
    target = dataset_path(tmp_path, "PointMass1D-v0", "random")
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    # what a SIGKILL during the write would leave: a temp file, never the final name
    stale = tmp_path / f".{target.name}.k1ll3d_x.tmp"
    stale.write_bytes(b"half a file")
    collect(cfg, log=lambda msg: None)
    assert not stale.exists()
    ds = load_d4rl(target)
    # never terminates, 30-step time limit: a timeout every 30 rows, 10 trailing rows
    np.testing.assert_array_equal(np.flatnonzero(ds.timeouts), [29, 59, 89])
    assert not ds.terminals.any()
    assert "ref_max_score" not in ds.metadata  # no behaviour policy, no best return


def test_config_errors_are_clear() -> None:
    with pytest.raises(MbrlError, match="Did you mean 'medium'"):
        CollectConfig(env=ENV, out=Path("x"), kinds=("medum",))
    with pytest.raises(MbrlError, match="behavior-steps 0"):
        CollectConfig(env=ENV, out=Path("x"), kinds=("medium",), behavior_steps=0)
    with pytest.raises(MbrlError, match="learning-starts"):
        CollectConfig(env=ENV, out=Path("x"), behavior_steps=100, learning_starts=100)
    assert gen.parse_kinds("medium-expert,random") == ("random", "medium-expert")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_collect_info_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["data", "collect", "PointMass1D-v0", "--out", str(tmp_path), "--kinds", "random"]
    small = ["--behavior-steps", "0", "--size", "90", "--no-progress"]
    code, out, err = run_cli([*args, *small], capsys)
    assert code == 0, err
    path = dataset_path(tmp_path, "PointMass1D-v0", "random")
    assert str(path) in out.replace("\n", "")
    code, out, _ = run_cli(["data", "info", str(path)], capsys)
    assert code == 0
    for text in ("PointMass1D-v0", "metadata env_version", "metadata gymnasium_version", "90"):
        assert text in out

    code, _, err = run_cli([*args, "--size", "91", "--behavior-steps", "0"], capsys)
    assert code == 2 and "other settings" in err and "--overwrite" in err
    code, _, err = run_cli([*args, *small, "--overwrite"], capsys)
    assert code == 0, err

    code, _, err = run_cli(["data", "collect", "HalfCheetah-v9", "--out", str(tmp_path)], capsys)
    assert code == 2 and "HalfCheetah-v" in err and "Traceback" not in err
    code, _, err = run_cli(["data", "collect", "CartPole-v1", "--out", str(tmp_path)], capsys)
    assert code == 2 and "only Box" in err
    code, _, err = run_cli([*args[:5], "--kinds", "random,expret"], capsys)
    assert code == 2 and "Did you mean 'expert'" in err

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "pointmass1d-v0-random.hdf5").write_bytes(b"not ours")
    code, _, err = run_cli(
        ["data", "collect", "PointMass1D-v0", "--out", str(foreign), "--kinds", "random", *small],
        capsys,
    )
    assert code == 2 and "already exist" in err
