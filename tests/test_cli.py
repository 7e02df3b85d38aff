"""The `mbrl` CLI: help, errors, and a whole (tiny) run through the run directory."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from mbrl.cli import main
from mbrl.config import RunConfig, from_dict, load_yaml
from mbrl.rundir import METRICS_HEADER, read_metrics


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:  # tyro exits for --help
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for cmd in ("train", "eval", "data", "envs", "agents"):
        assert cmd in out


def test_no_arguments_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli([], capsys)
    assert code == 2 and "usage: mbrl COMMAND" in out


def test_unknown_command_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["trian"], capsys)
    assert code == 2
    assert "Did you mean 'train'?" in err
    assert "Traceback" not in err


def test_data_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["data", "--help"], capsys)
    assert code == 0
    for cmd in ("info", "convert", "download"):
        assert cmd in out


def test_train_help_lists_agents(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0 and "sb3-sac" in out


def test_agent_help_shows_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["train", "sb3-sac", "--help"], capsys)
    assert code == 0
    for flag in ("--agent.learning-rate", "--agent.batch-size", "--run.seed", "--run.env"):
        assert flag in out


def test_unknown_agent_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", "sb3-sca"], capsys)
    assert code == 2 and "Did you mean 'sb3-sac'?" in err


def test_unknown_env_fails_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    code, _, err = run_cli(
        ["train", "sb3-sac", "--run.env", "Pendulm-v1", "--run.run-root", str(root)], capsys
    )
    assert code == 2 and "Did you mean 'Pendulum-v1'?" in err
    assert not root.exists()


def test_invalid_value_names_field(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", "sb3-sac", "--run.total-steps", "0"], capsys)
    assert code == 2 and "total_steps=0 must be > 0" in err


def test_bad_config_file_names_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  learning_rat: 0.1\n")
    code, _, err = run_cli(["train", "sb3-sac", "--config", str(bad)], capsys)
    assert code == 2
    assert "bad.yaml" in err and "learning_rat" in err and "learning_rate" in err
    bad.write_text("agnt: {}\n")
    code, _, err = run_cli(["train", "sb3-sac", "--config", str(bad)], capsys)
    assert code == 2 and "'agent' and 'run'" in err


def test_unknown_preset(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", "sb3-sac", "--preset", "nope"], capsys)
    assert code == 2 and "no preset 'nope'" in err


def test_resume_rejects_non_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", "--resume", str(tmp_path)], capsys)
    assert code == 2 and "not a run directory" in err


def test_train_writes_run_directory_and_eval_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 600-step SB3 SAC run on Pendulum: every artefact of the run directory."""
    root = tmp_path / "runs"
    cfg_file = tmp_path / "over.yaml"
    cfg_file.write_text("agent:\n  learning_starts: 200\n  log_every: 100\n")
    args = [
        "train", "sb3-sac", "--config", str(cfg_file),
        "--run.env", "Pendulum-v1", "--run.total-steps", "600", "--run.seed", "3",
        "--run.eval-every", "300", "--run.eval-episodes", "2", "--run.checkpoint-every", "300",
        "--run.run-root", str(root), "--run.no-progress", "--agent.batch-size", "64",
    ]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    (run_dir,) = list((root / "Pendulum-v1" / "sb3-sac").iterdir())
    assert run_dir.name.startswith("3-")

    # Resolved config: defaults < --config file < command line, and it reads back typed.
    saved = load_yaml(run_dir / "config.yaml")
    assert saved["agent_name"] == "sb3-sac"
    assert saved["agent"]["learning_starts"] == 200  # from the file
    assert saved["agent"]["batch_size"] == 64  # from the command line
    assert saved["agent"]["learning_rate"] == 3e-4  # default
    run = from_dict(RunConfig, saved["run"])
    assert run.total_steps == 600 and run.seed == 3 and run.run_root == root
    assert "# command: " in (run_dir / "config.yaml").read_text()

    # metrics.csv in long format with stable names.
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert tuple(header.split(",")) == METRICS_HEADER
    rows = read_metrics(run_dir / "metrics.csv")
    keys = {r["key"] for r in rows}
    assert {"eval/return", "time/sps", "train/critic_loss", "train/actor_loss"} <= keys
    eval_steps = sorted(r["step"] for r in rows if r["key"] == "eval/return")
    assert eval_steps == [300, 600]
    assert all(r["wall_time"] >= 0 for r in rows)

    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.zip")) == [
        "step_000000300.zip",
        "step_000000600.zip",
    ]

    summary = json.loads((run_dir / "summary.json").read_text())
    final_eval = [r["value"] for r in rows if r["key"] == "eval/return" and r["step"] == 600]
    assert summary["final"]["eval/return"] == pytest.approx(final_eval[0])
    assert summary["agent"] == "sb3-sac" and summary["seed"] == 3
    assert summary["wall_time_s"] > 0
    for key in ("commit", "started", "date", "machine", "versions", "command"):
        assert key in summary
    assert "torch" in summary["versions"]
    assert "normalized_score" not in summary  # Pendulum has no reference scores

    # mbrl eval re-evaluates the latest checkpoint deterministically.
    code, out, err = run_cli(["eval", str(run_dir), "--episodes", "2"], capsys)
    assert code == 0, err
    assert "eval/return" in out
    assert f"{summary['final']['eval/return']:.4g}" in out  # same seeds, same policy

    # --resume of a finished run trains nothing more and appends to metrics.csv.
    n_rows = len(rows)
    code, _, err = run_cli(["train", "--resume", str(run_dir)], capsys)
    assert code == 0, err
    rows2 = read_metrics(run_dir / "metrics.csv")
    assert len(rows2) > n_rows and rows2[:n_rows] == rows
    assert min(r["wall_time"] for r in rows2[n_rows:]) >= max(r["wall_time"] for r in rows)
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["final"]["eval/return"] == pytest.approx(summary["final"]["eval/return"])
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["seed"] == 3


def test_data_info_prints_correct_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import h5py
    import numpy as np
    from d4rl_files import write_d4rl_file

    path = write_d4rl_file(
        tmp_path / "hopper_test.hdf5",
        n_episodes=4, ep_len=[25, 25, 30, 20], obs_dim=11, act_dim=3,
        terminal_every=2, partial_tail=7, metadata={"env_id": "Hopper-v4"},
    )  # fmt: skip
    with h5py.File(path, "r") as f:
        rewards = f["rewards"][:]
    bounds = np.cumsum([0, 25, 25, 30, 20])
    returns = [rewards[a:b].sum() for a, b in itertools.pairwise(bounds)]
    code, out, err = run_cli(["data", "info", str(path)], capsys)
    assert code == 0, err
    flat = " ".join(out.split())
    assert "transitions │ 107" in flat
    assert "obs / act dims │ 11 / 3" in flat
    assert "5 (2 terminal, 2 timeout, 1 trailing partial)" in flat
    assert "min 20 mean 25.0 max 30" in flat
    assert f"mean {np.mean(returns):.1f}" in flat
    assert "Hopper-v4" in flat and "-20.272 / 3,234.300" in flat


def test_data_info_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["data", "info", "d4rl:hoper-medium-v2"], capsys)
    assert code == 2 and "Did you mean 'd4rl:hopper-medium-v2'?" in err
    bad = tmp_path / "broken.hdf5"
    bad.write_bytes(b"not an hdf5 file at all")
    code, _, err = run_cli(["data", "info", str(bad)], capsys)
    assert code == 2 and "broken.hdf5" in err and "Traceback" not in err
