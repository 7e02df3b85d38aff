"""`mbrl plot` on synthetic run directories: files exist, look like figures, and the
plotted values are the table's."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from synthetic_runs import write_run

from mbrl.cli import main
from mbrl.results import stats
from mbrl.results.plot import plot_runs
from mbrl.results.table import build_table

REFS = {"Hopper-v4": (0.0, 200.0), "Walker2d-v4": (-100.0, 100.0)}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for agent, gain in (("sac", 1.0), ("pets", 0.5)):
        for task, refs in REFS.items():
            for seed in range(3):
                final = gain * 100 + 20 * rng.standard_normal()
                curve = [(s, final * s / 4000) for s in range(1000, 5000, 1000)]
                write_run(tmp_path / "runs", agent, task, seed, curve, refs=refs)
    # a seed that evaluated at other steps and stopped early (unfinished)
    write_run(
        tmp_path / "runs",
        "sac",
        "Hopper-v4",
        7,
        [(1500, 10.0), (2500, 30.0)],
        refs=None,
        finished=False,
        run_cfg={"total_steps": 4000, "eval_every": 1000},
    )
    return tmp_path / "runs"


def test_plot_files_and_values_match_the_table(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    files = plot_runs([root], out, reps=300)
    names = {p.name for p in files}
    for fig in ("learning_curves", "aggregate_iqm", "performance_profile"):
        assert {f"{fig}.png", f"{fig}.svg"} <= names
        img = mpimg.imread(out / f"{fig}.png")
        assert img.shape[0] > 300 and img.shape[1] > 500, img.shape
        assert img[..., :3].std() > 0.05  # not a blank canvas
        svg = (out / f"{fig}.svg").read_text()
        assert svg.count("<path") > 10
    curves = pd.read_csv(out / "curves.csv")
    table = build_table([root], reps=100).per_task
    lc = curves[curves["kind"] == "learning_curve"]
    for _, row in table.iterrows():
        g = lc[(lc["task"] == row["task"]) & (lc["algorithm"] == row["algorithm"])]
        last = g[g["x"] == 4000].iloc[0]
        # the table's finished seeds; the unfinished sac seed stopped at 2500
        assert last["mean"] == pytest.approx(row["return_mean"])
        assert last["n"] == row["seeds"] == 3
        assert last["low"] <= last["mean"] <= last["high"]
    # the unfinished seed is interpolated inside its range only: at 2000, between 10 and 30
    g = lc[(lc["task"] == "Hopper-v4") & (lc["algorithm"] == "sac")].set_index("x")
    assert g.loc[2000, "n"] == 4 and g.loc[1000, "n"] == 3 and 1500 in g.index
    # the last IQM point is the table's aggregate IQM of normalized final scores
    agg = build_table([root], reps=100).aggregate.set_index("algorithm")
    iqm = curves[curves["kind"] == "iqm_curve"]
    for algorithm in ("sac", "pets"):
        point = iqm[(iqm["algorithm"] == algorithm) & (iqm["x"] == 4000)].iloc[0]
        assert point["mean"] == pytest.approx(agg.loc[algorithm, "iqm"])
    # the profile starts at 1 (every run above the lowest tau) and ends at 0
    prof = curves[curves["kind"] == "performance_profile"]
    for _, g in prof.groupby("algorithm"):
        assert g["mean"].iloc[0] == 1.0 and g["mean"].iloc[-1] == 0.0
        assert np.all(np.diff(g["mean"].to_numpy()) <= 0)


def test_plot_iqm_point_by_hand(tmp_path: Path) -> None:
    # one task, four seeds with final normalized scores 0, 10, 20, 100 -> IQM 15
    for seed, final in enumerate([0.0, 20.0, 40.0, 200.0]):
        write_run(
            tmp_path / "r", "sac", "Hopper-v4", seed, [(10, 0.0), (20, final)], refs=(0.0, 200.0)
        )
    plot_runs([tmp_path / "r"], tmp_path / "p", formats=("png",), reps=50)
    curves = pd.read_csv(tmp_path / "p" / "curves.csv")
    iqm = curves[curves["kind"] == "iqm_curve"].set_index("x")
    assert iqm.loc[20, "mean"] == pytest.approx(15.0)
    assert iqm.loc[20, "mean"] == pytest.approx(
        stats.aggregate([np.array([0, 10, 20, 100])], "iqm")
    )


def test_cli_plot_without_reference_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed in range(2):
        write_run(tmp_path / "r", "pets", "PointMass1D-v0", seed, [(30, -3.0), (60, -1.0 - seed)])
    assert main(["plot", str(tmp_path / "r"), "--out", str(tmp_path / "p")]) == 0
    produced = sorted(p.name for p in (tmp_path / "p").iterdir())
    # no reference scores: learning curves only
    assert produced == [
        "curves.csv",
        "learning_curves.png",
        "learning_curves.svg",
        "provenance.json",
    ]
    assert (
        main(["plot", str(tmp_path / "r"), "--metric", "eval/nope", "--out", str(tmp_path / "q")])
        == 2
    )
    assert "no 'eval/nope' rows" in capsys.readouterr().err
