"""`mbrl model eval`: the model-fitting pipeline that `make demo` runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mbrl.cli import main
from mbrl.data.d4rl import load_d4rl
from mbrl.errors import MbrlError
from mbrl.model_eval import split_trajectories


class _Ep:
    def __init__(self, i: int) -> None:
        self.i = i


def test_split_holds_out_whole_trajectories() -> None:
    eps = [_Ep(i) for i in range(10)]
    train, held = split_trajectories(eps, 0.2, seed=0)
    assert len(held) == 2 and len(train) == 8
    assert sorted(e.i for e in train + held) == list(range(10))
    again = split_trajectories(eps, 0.2, seed=0)
    assert [e.i for e in again[1]] == [e.i for e in held]
    with pytest.raises(MbrlError, match="at least 2 trajectories"):
        split_trajectories(eps[:1], 0.2, seed=0)


def test_model_eval_on_point_mass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "model", "eval", "--run.env", "PointMass1D-v0", "--eval.collect-steps", "1500",
        "--eval.horizons", "1", "5", "10", "--eval.ensemble.num-members", "3",
        "--eval.ensemble.num-elites", "2", "--eval.ensemble.hidden-size", "32",
        "--eval.trainer.max-epochs", "40", "--run.run-root", str(tmp_path),
        "--run.no-progress", "--run.no-tensorboard",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    (run_dir,) = list((tmp_path / "PointMass1D-v0" / "model-eval").iterdir())
    for name in ("config.yaml", "metrics.csv", "summary.json", "results.md", "open_loop.png"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    nmse = {k: {int(h): v for h, v in r["nmse"].items()} for k, r in summary["open_loop"].items()}
    assert set(nmse) == {"copy-obs", "linear", "ensemble"}
    # The point mass is linear: the linear fit is near-exact, and both learned models
    # beat predicting no change at every horizon.
    for h in (1, 5, 10):
        assert nmse["linear"][h] < 0.05 * nmse["copy-obs"][h]
        assert nmse["ensemble"][h] < nmse["copy-obs"][h]
    assert nmse["copy-obs"][10] > nmse["copy-obs"][1]  # errors compound with horizon
    assert summary["fit"]["ensemble"]["epochs"] <= 40
    assert "| ensemble |" in (run_dir / "results.md").read_text() and "ensemble" in out
    # The collected data are kept as a D4RL-format file the loader reads back.
    ds = load_d4rl(run_dir / "data.hdf5")
    assert len(ds) == 1500 and ds.timeouts.sum() == 1500 // 30
    assert np.isfinite(ds.observations).all()


def interrupted_and_resumed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: Callable[[Path], list[str]],
    interrupt: Callable[[dict[str, float]], bool],
    model: str,
) -> tuple[Path, Path]:
    """`args(root)` once uninterrupted (``a``), once stopped by Ctrl-C in the metrics
    logger when ``interrupt(metrics)`` says so (``b``), then ``b`` resumed; asserts that
    both end with the same ``model`` weights and returns both run dirs."""
    import torch

    from mbrl.rundir import MetricsLogger

    assert main(args(tmp_path / "a")) == 0
    (full,) = list((tmp_path / "a" / "PointMass1D-v0" / "model-eval").iterdir())

    original_log = MetricsLogger.log

    def interrupting_log(self: MetricsLogger, step: int, metrics: dict[str, float]) -> None:
        original_log(self, step, metrics)
        if interrupt(metrics):
            raise KeyboardInterrupt

    monkeypatch.setattr(MetricsLogger, "log", interrupting_log)
    assert main(args(tmp_path / "b")) == 130  # Ctrl-C: interrupted, checkpoint kept
    monkeypatch.setattr(MetricsLogger, "log", original_log)
    (part,) = list((tmp_path / "b" / "PointMass1D-v0" / "model-eval").iterdir())
    assert (part / "checkpoints" / f"fit_{model}.pt").is_file()
    assert not (part / "summary.json").exists()

    assert main(["model", "eval", "--resume", str(part)]) == 0
    assert f"{model}: resuming the fit after epoch" in capsys.readouterr().out
    a = torch.load(full / f"{model}.pt")
    b = torch.load(part / f"{model}.pt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert (part / "summary.json").is_file()
    return full, part


def test_interrupted_model_eval_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def args(root: Path) -> list[str]:
        return [
            "model", "eval", "--run.env", "PointMass1D-v0", "--eval.collect-steps", "900",
            "--eval.horizons", "1", "5", "--eval.ensemble.num-members", "2",
            "--eval.ensemble.num-elites", "1", "--eval.ensemble.hidden-size", "16",
            "--eval.trainer.max-epochs", "6", "--eval.trainer.patience", "100",
            "--run.run-root", str(root), "--run.no-progress", "--run.no-tensorboard",
        ]  # fmt: skip

    interrupted_and_resumed(
        tmp_path, monkeypatch, capsys, args, lambda m: m.get("model/epoch") == 3, "ensemble"
    )


def test_model_eval_compares_koopman_with_the_ensemble(tmp_path: Path) -> None:
    """Both registered model types on the same data; both beat predicting no change."""
    args = [
        "model", "eval", "--run.env", "PointMass1D-v0", "--eval.collect-steps", "1500",
        "--eval.models", "ensemble", "koopman", "--eval.horizons", "1", "10",
        "--eval.ensemble.num-members", "2", "--eval.ensemble.num-elites", "2",
        "--eval.ensemble.hidden-size", "32", "--eval.trainer.max-epochs", "30",
        "--eval.koopman.num-members", "2", "--eval.koopman.latent-dim", "16",
        "--eval.koopman.hidden-size", "64", "--eval.koopman.horizon", "8",
        "--eval.seq-trainer.max-grad-steps", "1000", "--run.run-root", str(tmp_path),
        "--run.no-progress", "--run.no-tensorboard",
    ]  # fmt: skip
    assert main(args) == 0
    (run_dir,) = list((tmp_path / "PointMass1D-v0" / "model-eval").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    nmse = {k: {int(h): v for h, v in r["nmse"].items()} for k, r in summary["open_loop"].items()}
    assert set(nmse) == {"copy-obs", "linear", "ensemble", "koopman"}
    for h in (1, 10):  # measured: ~0.03x and ~0.05x of "no change"
        assert nmse["koopman"][h] < 0.2 * nmse["copy-obs"][h]
    assert summary["fit"]["koopman"]["windows"] > 0
    assert "| koopman |" in (run_dir / "results.md").read_text()


def test_interrupted_sequence_model_fit_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Koopman fit killed after its 3rd epoch continues with `--resume` and ends with
    the weights of an uninterrupted fit; a resume of a finished run does not refit."""

    def args(root: Path) -> list[str]:
        return [
            "model", "eval", "--run.env", "PointMass1D-v0", "--eval.collect-steps", "600",
            "--eval.models", "koopman", "--eval.horizons", "1", "5",
            "--eval.koopman.num-members", "2", "--eval.koopman.latent-dim", "8",
            "--eval.koopman.hidden-size", "16", "--eval.koopman.horizon", "6",
            "--eval.seq-trainer.max-epochs", "5", "--eval.seq-trainer.patience", "100",
            "--run.run-root", str(root), "--run.no-progress", "--run.no-tensorboard",
        ]  # fmt: skip

    epochs_seen: list[float] = []

    def third_epoch(metrics: dict[str, float]) -> bool:  # the sequence trainer logs per epoch
        if "model/holdout_mse" in metrics:
            epochs_seen.append(metrics["model/holdout_mse"])
        return len(epochs_seen) == 3 and "model/holdout_mse" in metrics

    full, part = interrupted_and_resumed(
        tmp_path, monkeypatch, capsys, args, third_epoch, "koopman"
    )
    s_full = json.loads((full / "summary.json").read_text())
    s_part = json.loads((part / "summary.json").read_text())
    assert s_part["fit"]["koopman"]["epochs"] == s_full["fit"]["koopman"]["epochs"] == 5
    assert s_part["open_loop"]["koopman"] == s_full["open_loop"]["koopman"]

    # Resuming the finished run scores it again without another epoch of training.
    def fit_rows() -> int:
        return (part / "metrics.csv").read_text().count("model/holdout_mse")

    rows = fit_rows()
    (part / "summary.json").unlink()
    assert main(["model", "eval", "--resume", str(part)]) == 0
    assert fit_rows() == rows
    again = json.loads((part / "summary.json").read_text())
    assert again["fit"]["koopman"]["epochs"] == 5
    assert again["open_loop"]["koopman"] == s_full["open_loop"]["koopman"]
