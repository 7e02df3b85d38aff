"""`mbrl table` and the statistics behind it, on synthetic run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_runs import write_run

from mbrl.cli import main
from mbrl.errors import MbrlError
from mbrl.results import stats
from mbrl.results.runs import find_run_dirs, load_runs
from mbrl.results.table import build_table, to_latex, to_markdown, write_table

# Final returns per (agent, task, seed); Hopper refs (0, 200), Walker refs (-100, 100).
HOPPER, WALKER = "Hopper-v4", "Walker2d-v4"
REFS = {HOPPER: (0.0, 200.0), WALKER: (-100.0, 100.0)}
FINALS = {
    ("sac", HOPPER): [10.0, 20.0, 45.0, 60.0],
    ("sac", WALKER): [-20.0, 0.0, 40.0, 100.0],
    ("pets", HOPPER): [30.0, 50.0, 70.0],
    ("pets", WALKER): [-60.0, 20.0, 60.0],
}


def norm(task: str, ret: float) -> float:
    lo, hi = REFS[task]
    return 100 * (ret - lo) / (hi - lo)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for (agent, task), finals in FINALS.items():
        for seed, final in enumerate(finals):
            # evaluations at 100, 200, 300: the return at step 200 is final / 2
            curve = [(100, 0.0), (200, final / 2), (300, final)]
            write_run(tmp_path / "runs", agent, task, seed, curve, refs=REFS[task])
    # an unfinished run is left out of the table
    write_run(tmp_path / "runs", "sac", HOPPER, 9, [(100, 1e6)], refs=None, finished=False)
    return tmp_path / "runs"


def row(df: pd.DataFrame, task: str, algorithm: str) -> pd.Series:
    sel = df[(df["task"] == task) & (df["algorithm"] == algorithm)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_per_task_means_stds_and_normalized_scores_match_hand_values(root: Path) -> None:
    t = build_table([root], budgets=[250], reps=200)
    assert len(t.per_task) == 4 and len(t.skipped) == 1
    r = row(t.per_task, HOPPER, "sac")
    # by hand: mean (10+20+45+60)/4 = 33.75; deviations -23.75 -13.75 11.25 26.25
    # sample variance (564.0625+189.0625+126.5625+689.0625)/3 = 522.9167
    assert r["seeds"] == 4
    assert r["return_mean"] == pytest.approx(33.75)
    assert r["return_std"] == pytest.approx(math.sqrt(1568.75 / 3))
    assert r["normalized_mean"] == pytest.approx(33.75 / 2)
    assert r["normalized_std"] == pytest.approx(math.sqrt(1568.75 / 3) / 2)
    r = row(t.per_task, WALKER, "pets")
    # Walker normalization 100 (R + 100) / 200: finals -60, 20, 60 -> 20, 60, 80
    assert r["return_mean"] == pytest.approx(20 / 3)
    assert r["normalized_mean"] == pytest.approx(160 / 3)
    assert r["normalized_std"] == pytest.approx(np.std([20, 60, 80], ddof=1))
    # budget 250: the evaluation at step 200, i.e. half the final return
    assert r["return@250_mean"] == pytest.approx(10 / 3)
    assert r["return@250_n"] == 3


def test_offline_budgets_count_gradient_updates(tmp_path: Path) -> None:
    for seed, final in enumerate((300.0, 500.0)):
        curve = [(1000, 0.0), (2000, final / 2), (4000, final)]
        write_run(tmp_path, "ravl", "Hopper-v4", seed, curve, dataset="hopper.hdf5")
    t = build_table([tmp_path], budgets=[2500, 5000], reps=50)
    r = row(t.per_task, "hopper.hdf5", "ravl")
    assert r["return@2500_mean"] == pytest.approx(200.0) and r["return@2500_n"] == 2
    assert math.isnan(r["return@5000_mean"])  # the runs stop at 4k updates


def test_budget_beyond_a_runs_length_is_not_reported(root: Path) -> None:
    t = build_table([root], budgets=[100, 400], reps=100)
    r = row(t.per_task, HOPPER, "sac")
    assert r["return@100_mean"] == 0.0 and r["return@100_n"] == 4
    assert math.isnan(r["return@400_mean"]) and r["return@400_n"] == 0


def test_aggregates_equal_hand_computed_mean_median_iqm(root: Path) -> None:
    t = build_table([root], reps=500)
    agg = t.aggregate.set_index("algorithm")
    sac_h = [norm(HOPPER, x) for x in FINALS[("sac", HOPPER)]]  # 5, 10, 22.5, 30
    sac_w = [norm(WALKER, x) for x in FINALS[("sac", WALKER)]]  # 40, 50, 70, 100
    assert sac_h == [5, 10, 22.5, 30] and sac_w == [40, 50, 70, 100]
    # IQM pools the 8 runs: sorted 5 10 22.5 30 40 50 70 100, drop 2 per end -> 22.5..50
    assert agg.loc["sac", "iqm"] == pytest.approx((22.5 + 30 + 40 + 50) / 4)
    # mean / median over tasks of per-task means: 16.875 and 65
    assert agg.loc["sac", "mean"] == pytest.approx((16.875 + 65) / 2)
    assert agg.loc["sac", "median"] == pytest.approx((16.875 + 65) / 2)
    assert agg.loc["sac", "runs"] == 8 and agg.loc["sac", "tasks"] == 2
    for stat in ("mean", "median", "iqm"):
        assert (
            agg.loc["sac", f"{stat}_low"] <= agg.loc["sac", stat] <= agg.loc["sac", f"{stat}_high"]
        )
        assert agg.loc["sac", f"{stat}_low"] < agg.loc["sac", f"{stat}_high"]


def test_iqm_and_median_definitions() -> None:
    # 3 tasks of one run: median of task means; IQM of 3 values cuts floor(0.75)=0
    assert stats.aggregate([np.array([1.0]), np.array([5.0]), np.array([100.0])], "median") == 5
    assert stats.aggregate([np.array([1.0]), np.array([5.0]), np.array([100.0])], "iqm") == 106 / 3
    # 4 values: cut one per end
    assert stats.aggregate([np.array([1.0, 2.0, 3.0, 1000.0])], "iqm") == 2.5


def test_bootstrap_ci_contains_the_true_iqm_at_its_nominal_rate() -> None:
    # scores ~ Normal(task mean 50, sd 10) on 3 tasks: the population IQM is 50
    rng = np.random.default_rng(0)
    trials, covered = 200, 0
    for i in range(trials):
        per_task = [rng.normal(50.0, 10.0, size=20) for _ in range(3)]
        lo, hi = stats.bootstrap_ci(per_task, "iqm", reps=1000, seed=i)
        covered += lo <= 50.0 <= hi
    assert 0.88 <= covered / trials <= 0.995, covered
    # a single draw as in the acceptance check
    lo, hi = stats.bootstrap_ci([rng.normal(50.0, 10.0, size=30) for _ in range(3)], "iqm")
    assert lo <= 50.0 <= hi and hi - lo < 10


def test_stratified_bootstrap_never_mixes_tasks() -> None:
    # tasks with constant scores: any resample keeps every task's mean, so the CI of
    # the mean over tasks collapses to the point (an unstratified one would not)
    lo, hi = stats.bootstrap_ci([np.full(5, 0.0), np.full(5, 100.0)], "mean", reps=500)
    assert lo == hi == 50.0


def test_probability_of_improvement_by_hand() -> None:
    # task 1: x=1,2,3 vs y=2,2 -> (0+0+.5+.5+1+1)/6 = 0.5; task 2: x=5,6 vs y=1,2 -> 1
    est, lo, hi = stats.probability_of_improvement(
        [np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0])],
        [np.array([2.0, 2.0]), np.array([1.0, 2.0])],
        reps=2000,
    )
    assert est == pytest.approx(0.75)
    assert lo <= est <= hi and hi <= 1.0


def test_compare_uses_shared_tasks(root: Path) -> None:
    t = build_table([root], compare_pair=("pets", "sac"), reps=500)
    assert t.comparison is not None and t.comparison.tasks == [HOPPER, WALKER]
    # Hopper: pets 30 50 70 vs sac 10 20 45 60 -> wins 2+3+4 = 9 of 12 -> .75
    # Walker: pets -60 20 60 vs sac -20 0 40 100 -> wins 0+2+3 = 5 of 12
    assert t.comparison.estimate == pytest.approx((0.75 + 5 / 12) / 2)
    with pytest.raises(MbrlError, match="Did you mean 'pets'"):
        build_table([root], compare_pair=("pest", "sac"), reps=10)


def test_performance_profile_by_hand() -> None:
    prof, lo, hi = stats.performance_profile(
        [np.array([10.0, 30.0]), np.array([50.0, 70.0, 90.0, 110.0])],
        taus=np.array([0.0, 20.0, 60.0, 200.0]),
        reps=200,
    )
    # task means of [x > tau]: tau 0 -> 1; tau 20 -> (.5 + 1)/2; tau 60 -> (0 + .75)/2
    np.testing.assert_allclose(prof, [1.0, 0.75, 0.375, 0.0])
    assert np.all(lo <= prof) and np.all(prof <= hi)


def test_different_configs_are_split_and_labelled_or_refused(tmp_path: Path) -> None:
    curve = [(100, 1.0), (200, 2.0)]
    for seed in (0, 1):
        write_run(tmp_path, "sac", HOPPER, seed, curve, agent_cfg={"lr": 0.001})
        write_run(
            tmp_path,
            "sac",
            HOPPER,
            seed,
            [(100, 7.0), (200, 9.0)],
            agent_cfg={"lr": 0.003},
            name="-b",
        )
    # differing only in non-semantic fields (threads, device, run_name) is one config
    write_run(
        tmp_path,
        "sac",
        HOPPER,
        2,
        curve,
        agent_cfg={"lr": 0.001},
        run_cfg={"torch_threads": 4, "device": "cuda", "run_name": "x"},
        name="-c",
    )
    t = build_table([tmp_path], reps=10)
    assert list(t.per_task["algorithm"]) == ["sac [lr=0.001]", "sac [lr=0.003]"]
    assert list(t.per_task["seeds"]) == [3, 2]
    assert list(t.per_task["return_mean"]) == [2.0, 9.0]
    with pytest.raises(MbrlError, match=r"agent\.lr: 0\.001, 0\.003"):
        build_table([tmp_path], mixed="error", reps=10)


def test_same_seed_twice_is_refused(tmp_path: Path) -> None:
    write_run(tmp_path, "sac", HOPPER, 0, [(100, 1.0)])
    write_run(tmp_path, "sac", HOPPER, 0, [(100, 2.0)], name="-again")
    with pytest.raises(MbrlError, match="with seed 0"):
        load_runs([tmp_path])


def test_renderings_and_files(root: Path, tmp_path: Path) -> None:
    t = build_table([root], budgets=[200], compare_pair=("sac", "pets"), reps=300)
    md = to_markdown(t)
    assert "| Hopper-v4 | sac | 4 | 33.750 ± 22.867 | 16.875 ± 11.434 | 16.875 ± 11.434 |" in md
    assert "IQM [95% CI]" in md and "P(sac > pets)" in md and "Commit:" in md
    tex = to_latex(t)
    assert r"\toprule" in tex and r"33.750 $\pm$ 22.867" in tex and "% Commit:" in tex
    files = write_table(t, tmp_path / "out" / "bench")
    names = sorted(p.name for p in files)
    assert names == sorted(
        ["bench.md", "bench.csv", "bench.aggregate.csv", "bench.tex", "bench.provenance.json"]
    )
    meta = json.loads((tmp_path / "out" / "bench.provenance.json").read_text())
    assert {"command", "commit", "date", "machine"} <= set(meta)
    csv = pd.read_csv(tmp_path / "out" / "bench.csv")
    assert row(csv, HOPPER, "sac")["return_mean"] == pytest.approx(33.75)


def test_cli_table(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t" / "table"
    code = main(
        [
            "table",
            str(root),
            "--out",
            str(out),
            "--budgets",
            "200",
            "--compare",
            "sac",
            "pets",
            "--reps",
            "200",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "33.750 ± 22.867" in printed and (out.parent / "table.md").is_file()
    assert main(["table", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_other_commands_run_dirs_are_ignored_and_cli_refuses_mixed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "model_eval" / "0-20260101-000000"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text("eval: {k: 5}\nrun: {seed: 0}\n")
    (other / "metrics.csv").write_text("step,wall_time,key,value\n")
    write_run(tmp_path, "sac", HOPPER, 0, [(100, 1.0)], agent_cfg={"lr": 0.1})
    write_run(tmp_path, "sac", HOPPER, 1, [(100, 2.0)], agent_cfg={"lr": 0.2})
    runs, _ = load_runs([tmp_path])
    assert len(runs) == 2
    assert main(["table", str(tmp_path), "--mixed", "error"]) == 2
    err = capsys.readouterr().err
    assert "different configs" in err and "Traceback" not in err


def test_runs_reusing_a_fitted_model_are_seeds_of_one_config(tmp_path: Path) -> None:
    """``agent.load_dynamics`` (a different path per seed, or unset in the run that fitted
    the model) does not split seeds; a real difference still does."""
    curve = [(100, 1.0), (200, 2.0)]
    for seed in (0, 1):
        cfg = {"lr": 0.001, "load_dynamics": f"/runs/mopo/{seed}-x"}
        write_run(tmp_path, "ravl", HOPPER, seed, curve, agent_cfg=cfg)
    write_run(tmp_path, "ravl", HOPPER, 2, curve, agent_cfg={"lr": 0.001, "load_dynamics": None})
    write_run(tmp_path, "ravl", HOPPER, 0, curve, agent_cfg={"lr": 0.003}, name="-b")
    t = build_table([tmp_path], reps=10)
    assert list(t.per_task["seeds"]) == [3, 1]
    assert list(t.per_task["algorithm"]) == ["ravl [lr=0.001]", "ravl [lr=0.003]"]


def test_symlinked_runs_are_found_once(tmp_path: Path) -> None:
    real = write_run(tmp_path / "elsewhere", "ravl", "Hopper-v4", 0, [(100, 5.0)])
    gathered = tmp_path / "results" / "ravl"
    gathered.mkdir(parents=True)
    (gathered / "seed0").symlink_to(real, target_is_directory=True)
    assert find_run_dirs([tmp_path / "results"]) == [gathered / "seed0"]
    # reached through the link and directly: one run, not two
    assert len(find_run_dirs([tmp_path / "results", tmp_path / "elsewhere"])) == 1
