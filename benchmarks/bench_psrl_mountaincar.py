"""Benchmark: PSRL vs PETS on MountainCarContinuous-v0, episodes until the flag is reached.

MountainCarContinuous pays +100 at the flag and −0.1·a² per step, so an agent that
dithers around the mean of its model learns to stand still: the task needs deep
exploration. PETS (Chua et al. 2018) scores a plan by its mean return over ensemble
members and explores only through the planner's noise; PSRL (Osband et al. 2013, here
MPC-PSRL with the bootstrap ensemble as posterior, :mod:`mbrl.agents.psrl`) commits to
one member for a whole training episode. Optionally PSRL with randomized prior
functions (``psrl-prior``: ``prior_scale`` β on normalized targets).

Each contestant × seed is a real ``mbrl train`` run of ``configs/<agent>/mountain_car.yaml``
(one random episode, then MPC; the presets differ only in the agent), stopped at the
end of the first training episode that reaches the flag (terminated before the
999-step limit), or after ``--max-episodes`` episodes. Reported per run: the episode
(1-based, the random episode counts) in which the flag was first reached, or "not
reached"; each episode's return; planning seconds per step; wall time.

    .venv/bin/python benchmarks/bench_psrl_mountaincar.py --seeds 0,1,2 \\
        --out results/psrl_mountaincar
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

import torch

from mbrl.agents.pets import PETSAgent, PETSConfig
from mbrl.agents.psrl import PSRLAgent, PSRLConfig
from mbrl.bench import append_run, train_until_stopped
from mbrl.config import RunConfig, from_dict, load_preset
from mbrl.data.buffer import ReplayBuffer
from mbrl.registry import AGENTS
from mbrl.rundir import cpu_model, git_commit, script_command
from mbrl.train import TrainConfig

EPISODE_STEPS = 999
MEASURED_FILES = ("agents", "mbrl", "envs", "configs/pets", "configs/psrl", "benchmarks")


class GoalReached(Exception):
    """Raised at the end of the first training episode that reached the flag."""


def _stopping(cls: type[PETSAgent]) -> type[PETSAgent]:
    class Stopping(cls):
        def on_episode_end(self, step: int, buffer: ReplayBuffer) -> dict[str, float]:
            i = buffer.last_index  # the episode's last transition
            reached = bool(buffer.terminated[i])
            out: dict[str, float] = super().on_episode_end(step, buffer)
            if reached:
                # the loop logs the episode row after this hook: log it ourselves first
                self.ctx.logger.log(step, {"bench/goal_step": float(step)})
                raise GoalReached
            return out

    Stopping.__name__ = f"Stopping{cls.__name__}"
    return Stopping


AGENTS.register("bench-pets", config=PETSConfig)(_stopping(PETSAgent))
AGENTS.register("bench-psrl", config=PSRLConfig)(_stopping(PSRLAgent))
CONTESTANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # name -> (registered agent, preset agent, extra agent overrides)
    "pets": ("bench-pets", "pets", {}),
    "psrl": ("bench-psrl", "psrl", {}),
    "psrl-prior": ("bench-psrl", "psrl", {"prior_scale": 1.0, "normalize_targets": True}),
}


def run_one(name: str, seed: int, max_episodes: int, root: Path) -> dict[str, Any]:
    agent_name, preset, ensemble_over = CONTESTANTS[name]
    data = load_preset(preset, "mountain_car")
    data["agent"]["ensemble"].update(ensemble_over)
    cfg_cls = PSRLConfig if preset == "psrl" else PETSConfig
    run_fields = {
        **data["run"],
        "total_steps": max_episodes * EPISODE_STEPS,
        "seed": seed,
        "run_root": root / name,
        "progress": False,
        "tensorboard": False,
        "checkpoint_every": 0,
    }
    run = RunConfig(**run_fields)
    cfg = TrainConfig(agent=from_dict(cfg_cls, data["agent"]), run=run)
    ended = train_until_stopped(agent_name, cfg, GoalReached)
    reached, rows = ended.stopped, ended.rows
    returns = [r["value"] for r in rows if r["key"] == "rollout/episode_return"]
    lengths = [r["value"] for r in rows if r["key"] == "rollout/episode_length"]
    plan = [r["value"] for r in rows if r["key"] == "train/plan_seconds"]
    episodes = len(lengths) + int(reached)  # the goal episode's row is not logged
    return {
        "contestant": name,
        "seed": seed,
        "goal_episode": episodes if reached else None,
        "episodes_run": episodes,
        "episode_returns": [round(x, 2) for x in returns],
        "plan_seconds_per_step": round(sum(plan) / len(plan), 4) if plan else None,
        "wall_s": round(ended.wall_s, 1),
        "run_dir": str(ended.run_dir),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# PSRL vs PETS on MountainCarContinuous-v0: episodes until the flag",
        "",
        f"- command: `{report['command']}`",
        f"- commit: `{report['commit']}`; date: {report['date']}",
        f"- machine: {report['machine']}; torch {torch.__version__}, 1 thread",
        "- presets: `configs/pets/mountain_car.yaml`, `configs/psrl/mountain_car.yaml` "
        "(episode 1 is uniform-random; then MPC, refit after every episode)",
        f"- a run stops at the first training episode that reaches the flag, or after "
        f"{report['max_episodes']} episodes",
        "",
        "| contestant | seed | flag first reached in episode | episode returns | "
        "plan s/step | wall s |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in report["runs"]:
        goal = r["goal_episode"] if r["goal_episode"] is not None else "not reached"
        rets = ", ".join(f"{x:.1f}" for x in r["episode_returns"]) or "-"
        lines.append(
            f"| {r['contestant']} | {r['seed']} | {goal} | {rets} | "
            f"{r['plan_seconds_per_step']} | {r['wall_s']:.0f} |"
        )
    lines += [
        "",
        "| contestant | runs reaching the flag | mean goal episode (reached) |",
        "|---|---:|---:|",
    ]
    for name in report["contestants"]:
        runs = [r for r in report["runs"] if r["contestant"] == name]
        hits = [r["goal_episode"] for r in runs if r["goal_episode"] is not None]
        mean = f"{sum(hits) / len(hits):.1f}" if hits else "-"
        lines.append(f"| {name} | {len(hits)}/{len(runs)} | {mean} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--contestants", default="pets,psrl")
    p.add_argument("--max-episodes", type=int, default=8)
    p.add_argument("--root", default="/tmp/bench_psrl_mountaincar")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = args.contestants.split(",")
    for n in names:
        if n not in CONTESTANTS:
            p.error(f"unknown contestant {n!r}; choose from {sorted(CONTESTANTS)}")
    report: dict[str, Any] = {
        "command": script_command("benchmarks/bench_psrl_mountaincar.py", argv),
        "commit": git_commit(MEASURED_FILES) or "unknown",
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": cpu_model(),
        "max_episodes": args.max_episodes,
        "contestants": names,
        "runs": [],
    }
    root = Path(args.root)
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:  # interleaved, so drift in machine load hits both alike
            r = run_one(name, seed, args.max_episodes, root)
            append_run(report, r, markdown, args.out)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
