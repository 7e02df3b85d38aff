"""The model-comparison benchmark (benchmarks/bench_models.py).

Trajectory subsampling on a hand-made dataset; the generated wins/losses section on
hand-made numbers (including a Koopman rollout slower than the ensemble's); the whole
script end to end on a tiny generated dataset, its fit cache, and re-rendering with a
PETS table from hand-made run directories.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from bench_scripts import load_benchmark
from d4rl_files import write_d4rl_file

from mbrl.data.d4rl import trajectories
from mbrl.data.datasets import load_dataset

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


bench = load_benchmark("bench_models")


def test_subsample_keeps_whole_trajectories(tmp_path: Path) -> None:
    path = write_d4rl_file(tmp_path / "d.hdf5", n_episodes=6, ep_len=[10, 20, 30, 40, 50, 60])
    ds = load_dataset(path)
    sub = bench.subsample(ds, 70, seed=3)
    eps = trajectories(sub)
    lengths = sorted(len(e.obs) for e in eps)
    assert len(sub) <= 70 and len(eps) >= 2
    assert set(lengths) <= {10, 20, 30, 40, 50, 60}
    assert sum(lengths) == len(sub)
    # every kept trajectory is a contiguous copy of one of the file's trajectories
    originals = {len(e.obs): e for e in trajectories(ds)}
    for e in eps:
        np.testing.assert_array_equal(e.obs, originals[len(e.obs)].obs)
        np.testing.assert_array_equal(e.next_obs, originals[len(e.obs)].next_obs)
    assert bench.subsample(ds, None, 0) is ds
    tiny = bench.subsample(ds, 1, 0)  # fewer rows than one trajectory: two whole ones
    assert len(trajectories(tiny)) == 2
    assert len(tiny) == sum(len(e.obs) for e in trajectories(tiny)) >= 20


def _block(koopman_rate: float) -> dict[str, Any]:
    nmse = {
        "ensemble": {1: 0.01, 10: 0.2, 25: 0.5, 50: 1.0},
        "koopman": {1: 0.05, 10: 0.1, 25: 0.2, 50: 0.4},
        "transformer": {1: 0.02, 10: 0.5, 25: 2.0, 50: 8.0},
        "copy-obs": {1: 0.03, 10: 0.3, 25: 0.6, 50: 0.9},
    }
    fit = {"ensemble": 10.0, "koopman": 40.0, "transformer": 20.0}
    models = {
        m: {"nmse": v, "fit_seconds": fit.get(m), "epochs": 5 if m in fit else None}
        for m, v in nmse.items()
    }
    rollout = {
        "ensemble step loop": {"seconds": 1.0, "steps_per_s": 100.0},
        "koopman predict_sequence (recurrent)": {"seconds": 1.0, "steps_per_s": 80.0},
        "koopman predict_sequence (best parallel)": {
            "seconds": 1.0,
            "steps_per_s": 30.0,
            "method": "fft",
        },
        "koopman PETS objective (best parallel)": {
            "seconds": 1.0,
            "steps_per_s": koopman_rate,
            "method": "scan",
        },
        "transformer predict_sequence_grouped": {"seconds": 1.0, "steps_per_s": 50.0},
    }
    return {
        "horizons": [1, 10, 25, 50],
        "models": models,
        "rollout": rollout,
        "rollout_setup": {"horizon": 50, "candidates": 400, "particles": 20},
    }


def test_wins_and_losses_from_numbers() -> None:
    lines = bench.wins_and_losses(_block(koopman_rate=250.0))
    text = "\n".join(lines)
    ens = next(ln for ln in lines if ln.startswith("- **ensemble**"))
    koop = next(ln for ln in lines if ln.startswith("- **koopman**"))
    tf = next(ln for ln in lines if ln.startswith("- **transformer**"))
    assert "open-loop error at h=1 (2× better than transformer)" in ens
    assert "fit time (2× better than transformer)" in ens
    assert "open-loop error at h=50 (2.5× better than ensemble)" in koop
    assert "rollout throughput (2.5× better than ensemble)" in koop
    assert "loses: open-loop error at h=1 (2.5× worse than transformer); fit time" in koop
    assert "open-loop error at h=50 (8× worse than ensemble)" in tf
    # copy-obs beats the ensemble at h=50 and the transformer from h=10 on
    assert "ensemble at h=50; koopman at h=1; transformer at h=10, 25, 50" in text
    assert "(400 sequences × 20 particles, 50 steps) by the Koopman model's parallel " in text
    assert "(`scan`) vs the ensemble rolled step by step: 2.50× (faster ✓)" in text
    assert "(`fft`) on 8,000 distinct rows (no particles shared)" in text
    assert "over 50 steps: 0.30× (NOT faster ✗)" in text
    slow = "\n".join(bench.wins_and_losses(_block(koopman_rate=40.0)))
    assert "0.40× (NOT faster ✗)" in slow
    assert "rollout throughput (1.25× worse than transformer)" in slow  # 40 vs 50
    assert "rollout throughput (2× better than transformer)" in slow  # the ensemble's


def test_sweep_verdict_names_where_koopman_wins() -> None:
    def roll(ens_s: float, koop_s: float) -> dict[str, dict[str, float | str]]:
        return {
            "ensemble step loop": {"seconds": ens_s, "steps_per_s": 1.0 / ens_s},
            bench.KOOPMAN_SEQUENCE: {"seconds": koop_s, "steps_per_s": 1 / koop_s,
                                     "method": "scan"},
        }  # fmt: skip

    block = {
        "rollout_setup": {"horizon": 50},
        "rollout_sweep": [
            {"rows": 1, "rollout": roll(0.02, 0.004)},
            {"rows": 7000, "rollout": roll(1.0, 4.0)},
        ],
    }
    line = bench.sweep_verdict(block)
    assert line is not None
    assert "faster than the ensemble step loop at rows 1 (5.00×); not at 7,000 (0.25×)" in line
    table = "\n".join(bench.sweep_markdown(block))
    assert "| 1 | 20.0 (1.00×) | 4.0 scan (5.00×) | – | – |" in table
    assert "| 7,000 | 1000.0 (1.00×) | 4000.0 scan (0.25×) | – | – |" in table
    assert bench.sweep_verdict({"rollout_setup": {"horizon": 50}}) is None


def test_rollout_only_times_without_fitting(tmp_path: Path) -> None:
    data = write_d4rl_file(
        tmp_path / "halfcheetah-v4-medium.hdf5", n_episodes=3, ep_len=40, obs_dim=17, act_dim=6
    )
    out = tmp_path / "report"
    argv = [
        "--dataset", str(data), "--rollout-only", "--models", "ensemble", "koopman",
        "--set", "ensemble.hidden_size=16", "koopman.hidden_size=16", "koopman.latent_dim=8",
        "--candidates", "6", "--particles", "8", "--repeats", "1", "--min-time", "0",
        "--run-root", str(tmp_path / "runs"), "--out", str(out),
    ]  # fmt: skip
    (block,) = bench.main(argv)["datasets"]
    assert block["models"] == {} and block["model_eval_run"] is None
    assert not (tmp_path / "runs").exists()  # nothing was fitted
    assert block["rollout"]["koopman PETS objective (best parallel)"]["steps_per_s"] > 0
    text = Path(f"{out}.md").read_text()
    assert "(HalfCheetah-v4): rollout timing only" in text and "nMSE" not in text.split("##")[1]
    assert "Issue check — PETS' objective (6 sequences × 8 particles, 50 steps)" in text


def _fake_pets_run(root: Path, env: str, model: str, seed: int, ret: float) -> None:
    d = root / env / "pets" / f"{seed}-{model}"
    d.mkdir(parents=True)
    cfg = {
        "agent_name": "pets",
        "agent": {"model": model, "horizon": 10},
        "run": {"env": env, "seed": seed, "total_steps": 2000},
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "metrics.csv").write_text(f"step,wall_time,key,value\n2000,9.0,eval/return,{ret}\n")
    summary = {"final": {"eval/return": ret}, "wall_time_s": 100.0 + seed}
    (d / "summary.json").write_text(json.dumps(summary))


def test_end_to_end_tiny(tmp_path: Path) -> None:
    """Fits, scores, throughput and report on 6×60 HalfCheetah-shaped transitions; a
    rerun reuses the fits; --from-json adds the PETS table."""
    data = write_d4rl_file(
        tmp_path / "halfcheetah-v4-medium.hdf5", n_episodes=6, ep_len=60, obs_dim=17, act_dim=6
    )
    out = tmp_path / "report"
    argv = [
        "--dataset", str(data), "--max-transitions", "300",
        "--set", "trainer.max_epochs=2", "seq_trainer.max_epochs=2", "ensemble.hidden_size=16",
        "koopman.hidden_size=16", "koopman.latent_dim=8", "koopman.horizon=8",
        "transformer.d_model=16", "transformer.context=8",
        "--candidates", "6", "--particles", "2", "--repeats", "1", "--min-time", "0",
        "--run-root", str(tmp_path / "runs"), "--out", str(out),
    ]  # fmt: skip
    res = bench.main(argv)
    (block,) = res["datasets"]
    assert block["transitions"] == 300 and block["trajectories"] == 5
    assert block["env_id"] == "HalfCheetah-v4"
    for m in ("ensemble", "koopman", "transformer"):
        r = block["models"][m]
        assert sorted(r["nmse"]) == [1, 10, 25, 50]
        assert all(math.isfinite(v) and v >= 0 for v in r["nmse"].values())
        assert r["epochs"] == 2 and r["stop_reason"] == "max_epochs" and r["fit_seconds"] > 0
    assert set(block["models"]) >= {"copy-obs", "linear"}
    roll = block["rollout"]
    assert len(roll) == 13 and all(r["steps_per_s"] > 0 for r in roll.values())
    for family in ("predict_sequence", "PETS objective"):
        best = roll[f"koopman {family} (best parallel)"]
        assert best["method"] in ("scan", "fft")
        assert best["steps_per_s"] == max(
            roll[f"koopman {family} ({m})"]["steps_per_s"] for m in ("scan", "fft")
        )
    assert math.isclose(
        roll["ensemble step loop"]["steps_per_s"] * roll["ensemble step loop"]["seconds"], 12 * 50
    )
    text = Path(f"{out}.md").read_text()
    assert "| model | nMSE h=1 | nMSE h=10 | nMSE h=25 | nMSE h=50 | fit s |" in text
    assert "Issue check" in text and "Where each model wins and loses" in text
    saved = json.loads(Path(f"{out}.json").read_text())
    assert saved["meta"]["commit"] and saved["meta"]["command"].endswith(str(out))

    # reuses the fits (same model-eval run, same errors); the batch sweep includes one
    # row, fewer than the Koopman ensemble's members (its rows wrap round)
    again = bench.main([*argv, "--rows-sweep", "1", "4"])
    (block2,) = again["datasets"]
    assert block2["model_eval_run"] == block["model_eval_run"]
    assert block2["models"]["koopman"]["nmse"] == block["models"]["koopman"]["nmse"]
    assert [e["rows"] for e in block2["rollout_sweep"]] == [1, 4]
    for e in block2["rollout_sweep"]:
        assert set(e["rollout"]) == {*bench.SWEEP_CONTESTANTS, bench.KOOPMAN_SEQUENCE}
        r = e["rollout"]["ensemble step loop"]
        assert math.isclose(r["steps_per_s"] * r["seconds"], e["rows"] * 50)
    text = Path(f"{out}.md").read_text()
    assert "Rollout time by batch size" in text and "Batch-size sweep" in text

    pets = tmp_path / "pets"
    for seed in (0, 1):
        for model, ret in (("ensemble", 100.0), ("koopman", 50.0), ("transformer", 70.0)):
            _fake_pets_run(pets, "InvertedPendulum-v5", model, seed, ret + seed)
    rendered = bench.main(["--from-json", f"{out}.json", "--pets", str(pets), "--out", str(out)])
    assert rendered["datasets"][0]["models"]["koopman"]["nmse"] == {
        int(h): v for h, v in block["models"]["koopman"]["nmse"].items()
    }
    text = Path(f"{out}.md").read_text()
    assert "## PETS with each model" in text
    row = next(ln for ln in text.splitlines() if "pets [model=koopman]" in ln)
    assert "50.500 ± 0.707" in row and "| 2 |" in row and "100" in row  # mean wall 100.5

    # Two reports rendered as one: both dataset sections, each with its own provenance,
    # and the PETS section of the report that has one.
    other = json.loads(Path(f"{out}.json").read_text())
    other["meta"] = {**other["meta"], "commit": "abc1234", "command": "bench_models.py --x"}
    for blk in other["datasets"]:
        blk["dataset"] = "/data/hopper-v4-medium.hdf5"
        blk["env_id"] = "Hopper-v4"
    (tmp_path / "other.json").write_text(json.dumps(other))
    merged_out = tmp_path / "merged"
    other.pop("pets", None)
    (tmp_path / "other.json").write_text(json.dumps(other))
    merged = bench.main(
        ["--from-json", str(tmp_path / "other.json"), "--pets", f"{out}.json",
         "--out", str(merged_out)]
    )  # fmt: skip
    assert [b["env_id"] for b in merged["datasets"]] == ["Hopper-v4"]
    assert merged["pets"] == rendered["pets"]
    merged = bench.main(
        ["--from-json", str(tmp_path / "other.json"), f"{out}.json", "--out", str(merged_out)]
    )
    assert [b["env_id"] for b in merged["datasets"]] == ["Hopper-v4", "HalfCheetah-v4"]
    assert merged["datasets"][0]["meta"]["commit"] == "abc1234"
    assert merged["datasets"][1]["meta"]["commit"] == saved["meta"]["commit"]
    assert merged["pets"] == rendered["pets"]
    text = Path(f"{merged_out}.md").read_text()
    assert "one report per dataset, merged" in text
    assert "## hopper-v4-medium.hdf5 (Hopper-v4)" in text
    assert "`abc1234`" in text and f"`{saved['meta']['commit']}`" in text
    assert "## PETS with each model" in text
