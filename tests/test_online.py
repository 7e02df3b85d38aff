"""The online loop: exact kill-and-resume, seeded resets, warm-up actions, `mbrl eval`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mbrl.agents.sac import SACAgent
from mbrl.checkpoint import find_latest, list_checkpoints, load_checkpoint
from mbrl.cli import main
from mbrl.data.buffer import ReplayBuffer
from mbrl.envs import get_env_spec
from mbrl.online import ACTION_SEED_OFFSET, UniformActions
from mbrl.rundir import read_metrics

torch.set_num_threads(1)

SEED = 5


def sac_args(root: Path, total: int = 600) -> list[str]:
    """600 steps of small SAC on PointMass1D-v0 (30-step episodes), checkpoints every 200."""
    return [
        "train", "sac", "--run.env", "PointMass1D-v0", "--run.total-steps", str(total),
        "--run.seed", str(SEED), "--run.eval-every", "200", "--run.eval-episodes", "2",
        "--run.checkpoint-every", "200", "--run.keep-checkpoints", "5",
        "--run.run-root", str(root), "--run.no-progress", "--run.no-tensorboard",
        "--agent.learning-starts", "100", "--agent.hidden-sizes", "32", "32",
        "--agent.batch-size", "32", "--agent.log-every", "100",
    ]  # fmt: skip


def last_values(rows: list[dict[str, float]]) -> dict[str, float]:
    """The last logged value of every key except wall-clock ones."""
    out = {}
    for r in rows:
        if not str(r["key"]).startswith("time/"):
            out[str(r["key"])] = r["value"]
    return out


def only_run(root: Path) -> Path:
    (run_dir,) = (root / "PointMass1D-v0" / "sac").iterdir()
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full")
    assert main(sac_args(root)) == 0
    return only_run(root)


def test_killed_and_resumed_run_ends_with_identical_metrics(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kill at step 350: mid-episode (350 % 30 = 20) and 150 steps after the checkpoint at
    # 200, which itself is mid-episode, so resuming must replay 20 actions of the episode.
    on_step = SACAgent.on_step

    def killed(self: SACAgent, step: int, buffer: ReplayBuffer) -> dict[str, float]:
        if step == 350:
            raise KeyboardInterrupt
        return on_step(self, step, buffer)

    monkeypatch.setattr(SACAgent, "on_step", killed)
    root = tmp_path / "runs"
    assert main(sac_args(root)) == 130  # the CLI's exit code for an interrupt
    run_dir = only_run(root)
    assert not (run_dir / "summary.json").exists()
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_000200.pt"]
    monkeypatch.setattr(SACAgent, "on_step", on_step)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--resume", str(run_dir)]) == 0
    assert not [w for w in caught if "bit-identical" in str(w.message)]

    want = json.loads((uninterrupted / "summary.json").read_text())["final"]
    got = json.loads((run_dir / "summary.json").read_text())["final"]
    assert got == want  # exact, not approximate
    rows_full = read_metrics(uninterrupted / "metrics.csv")
    rows_resumed = read_metrics(run_dir / "metrics.csv")
    final_full, final_resumed = last_values(rows_full), last_values(rows_resumed)
    assert {"train/critic_loss", "train/actor_loss", "train/alpha", "eval/return"} <= set(
        final_full
    )
    assert final_resumed == final_full
    # Every evaluation after the resume point matches too.
    evals = {r["step"]: r["value"] for r in rows_full if r["key"] == "eval/return"}
    evals_resumed = {r["step"]: r["value"] for r in rows_resumed if r["key"] == "eval/return"}
    assert evals_resumed == evals and sorted(evals) == [200, 400, 600]
    # And the networks themselves.
    a = load_checkpoint(find_latest(uninterrupted))  # type: ignore[arg-type]
    b = load_checkpoint(find_latest(run_dir))  # type: ignore[arg-type]
    for key, value in a["agent"]["actor"].items():
        assert torch.equal(value, b["agent"]["actor"][key]), key
    assert a["step"] == b["step"] == 600


def test_raising_the_budget_on_resume_equals_the_longer_run(
    uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished 400-step run continued to 600 (`--resume RUN --run.total-steps 600`)
    ends exactly like the 600-step run: the buffer grows, the schedule is unchanged."""
    root = tmp_path / "runs"
    assert main(sac_args(root, total=400)) == 0
    run_dir = only_run(root)
    short = json.loads((run_dir / "summary.json").read_text())
    assert main(["train", "--resume", str(run_dir), "--run.total-steps", "600"]) == 0
    want = json.loads((uninterrupted / "summary.json").read_text())
    got = json.loads((run_dir / "summary.json").read_text())
    assert got["final"] == want["final"] and got["total_steps"] == 600
    # the 400-step summary is kept beside, and the config says what changed
    assert json.loads((run_dir / "summary-400.json").read_text())["final"] == short["final"]
    config = (run_dir / "config.yaml").read_text()
    assert "total_steps: 600" in config and "raised from 400 to 600 on resume" in config
    assert "# command:" in config  # the original command line is still there
    evals = [r for r in read_metrics(run_dir / "metrics.csv") if r["key"] == "eval/return"]
    assert [r["step"] for r in evals] == [200, 400, 600]
    # a smaller budget, or other flags, are refused with a clear message
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--run.total-steps", "300"]) == 2
    assert "can only raise it" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--run.seed", "3"]) == 2
    assert "only --run.total-steps" in capsys.readouterr().err


def test_run_directory_buffer_resets_and_warmup_actions(uninterrupted: Path) -> None:
    rows = read_metrics(uninterrupted / "metrics.csv")
    keys = {r["key"] for r in rows}
    expected = {
        "eval/return",
        "eval/return_std",
        "rollout/episode_return",
        "rollout/episode_length",
        "time/sps",
        "train/critic_loss",
        "train/actor_loss",
        "train/alpha",
        "train/q_mean",
        "train/entropy",
    }
    assert expected <= keys
    episode_returns = [r for r in rows if r["key"] == "rollout/episode_return"]
    assert [r["step"] for r in episode_returns] == list(range(30, 601, 30))
    # The first training metrics appear once learning has started (step 100).
    assert min(r["step"] for r in rows if r["key"] == "train/critic_loss") == 100

    state = load_checkpoint(find_latest(uninterrupted))  # type: ignore[arg-type]
    assert state["step"] == 600 and state["episode"] == 20 and state["episode_length"] == 0
    spec = get_env_spec("PointMass1D-v0")
    buffer = ReplayBuffer(600, 2, 1)
    buffer.load_state_dict(state["buffer"])
    data = buffer.transitions()
    assert len(buffer) == 600 and bool(data.truncated[29::30].all())
    assert not bool(data.terminated.any()) and int(data.truncated.sum()) == 20

    # Episode k starts from env.reset(seed=run.seed + k).
    env = spec.make()
    for k in (0, 1, 7, 19):
        obs, _ = env.reset(seed=SEED + k)
        np.testing.assert_array_equal(data.obs[30 * k].numpy(), obs)
        # Episode returns logged equal the buffer's rewards (float32 in the buffer).
        assert episode_returns[k]["value"] == pytest.approx(
            float(data.rew[30 * k : 30 * (k + 1)].double().sum()), rel=1e-5
        )
    env.close()

    # The first learning_starts actions are the seeded uniform draws; later ones are not.
    space = spec.make().action_space
    draws = UniformActions(space.low, space.high, seed=SEED + ACTION_SEED_OFFSET)
    warmup = np.stack([draws.sample() for _ in range(100)])
    np.testing.assert_array_equal(data.act[:100].numpy(), warmup)
    assert not np.array_equal(
        data.act[100:110].numpy(), np.stack([draws.sample() for _ in range(10)])
    )


def test_mbrl_eval_reproduces_the_final_evaluation(
    uninterrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    final = json.loads((uninterrupted / "summary.json").read_text())["final"]
    capsys.readouterr()
    assert main(["eval", str(uninterrupted), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{final['eval/return']:.4g}" in out
    # ... and keeps the re-evaluation beside the run, with its provenance.
    (saved,) = (uninterrupted / "evals").glob("eval-*-2ep.json")
    record = json.loads(saved.read_text())
    assert record["result"]["eval/return"] == pytest.approx(final["eval/return"])
    assert record["episodes"] == 2 and record["checkpoint"].startswith("step_")
    assert {"commit", "date", "machine"} <= record.keys()


def test_resume_of_a_finished_run_trains_nothing(uninterrupted: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(uninterrupted, copy)
    before = json.loads((copy / "summary.json").read_text())["final"]
    n_rows = len(read_metrics(copy / "metrics.csv"))
    assert main(["train", "--resume", str(copy)]) == 0
    rows = read_metrics(copy / "metrics.csv")
    assert json.loads((copy / "summary.json").read_text())["final"] == before
    assert {r["key"] for r in rows[n_rows:]} <= {"eval/return", "eval/return_std", "eval/length"}


def test_uniform_actions_state_round_trip() -> None:
    low, high = np.array([-1.0, 0.0], np.float32), np.array([1.0, 5.0], np.float32)
    a = UniformActions(low, high, seed=3, chunk=16)
    for _ in range(10):
        a.sample()
    b = UniformActions(low, high, seed=99, chunk=16)
    b.load_state_dict(a.state_dict())
    want = np.stack([a.sample() for _ in range(40)])  # crosses chunk boundaries
    got = np.stack([b.sample() for _ in range(40)])
    np.testing.assert_array_equal(got, want)
    assert want.dtype == np.float32 and (want >= low).all() and (want <= high).all()
    assert want[:, 1].max() > 2.5  # the bounds are per dimension


def test_mbrl_eval_writes_a_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mbrl eval --video` renders headless (MUJOCO_GL=egl) and writes an MP4."""
    pytest.importorskip("imageio_ffmpeg", reason="needs the 'video' extra")
    import imageio.v2 as imageio

    args = [
        "train", "sac", "--run.env", "InvertedPendulum-v5", "--run.total-steps", "120",
        "--agent.learning-starts", "100", "--agent.batch-size", "32", "--run.eval-every", "0",
        "--run.eval-episodes", "1", "--run.run-root", str(tmp_path), "--run.no-progress",
        "--run.no-tensorboard",
    ]  # fmt: skip
    assert main(args) == 0
    (run_dir,) = list((tmp_path / "InvertedPendulum-v5" / "sac").iterdir())
    length = json.loads((run_dir / "summary.json").read_text())["final"]["eval/length"]
    assert main(["eval", str(run_dir), "--episodes", "1", "--video"]) == 0
    (video,) = list((run_dir / "videos").glob("*.mp4"))
    frames = imageio.mimread(video)
    assert len(frames) == int(length)  # one frame per step of the evaluated episode
    assert frames[0].ndim == 3 and frames[0].shape[2] == 3 and frames[0].std() > 0


def test_video_of_an_env_without_rendering_is_explained(
    uninterrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(uninterrupted), "--episodes", "1", "--video"]) == 2
    assert "cannot render videos" in capsys.readouterr().err
