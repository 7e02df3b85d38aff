"""Benchmark: PETS' first training episodes: how soon does it solve a task?

Issue #4 asks that PETS solve InvertedPendulum-v5 (return 1,000) within 5 episodes.
Each seed runs PETS with ``--preset`` (plus ``--set`` overrides) through the project's
training loop (:func:`mbrl.train.train`, what ``mbrl train pets`` runs), stopped at the
end of its ``--episodes``-th training episode, or earlier at the first episode whose
return reaches ``--solved``; a run that reaches its step budget first
(``--episodes × --max-episode-steps``) ends there. Episode 1 is whatever the preset does before
``learning_starts`` (uniform-random actions). Reported per run: every training episode's
return, the episode that first reached ``--solved`` (or "not solved"), the environment
steps taken, the seconds spent fitting the model, and the wall time.

The stop happens in the agent's ``on_episode_end`` hook, before the refit that would
follow the last episode; everything up to it is the unmodified agent.

    .venv/bin/python benchmarks/bench_pets_episodes.py --preset inverted_pendulum_cpu \\
        --seeds 0,1,2 --episodes 5 --solved 1000 --out results/pets_inverted_pendulum_episodes
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml

from mbrl.agents.pets import PETSAgent, PETSConfig
from mbrl.bench import append_run, train_until_stopped
from mbrl.config import RunConfig, deep_merge, from_dict, load_preset
from mbrl.data.buffer import ReplayBuffer
from mbrl.registry import AGENTS
from mbrl.rundir import cpu_model, git_commit, script_command
from mbrl.train import TrainConfig

MEASURED_FILES = ("agents", "mbrl", "envs", "configs/pets", "benchmarks")
AGENT = "bench-pets-episodes"


class Stop(Exception):
    """Raised at the end of the training episode that ends the benchmark run."""


class StoppingPETS(PETSAgent):
    """PETS that records every training episode's return in ``returns`` and stops after
    ``max_episodes`` episodes or at the first one returning at least ``solved`` (class
    attributes, reset per run: one run at a time)."""

    max_episodes = 5
    solved = float("inf")
    returns: ClassVar[list[float]] = []
    steps = 0

    def on_episode_end(self, step: int, buffer: ReplayBuffer) -> dict[str, float]:
        ret = _last_episode_return(buffer)
        StoppingPETS.returns.append(ret)
        StoppingPETS.steps = step
        if len(StoppingPETS.returns) >= self.max_episodes or ret >= self.solved:
            raise Stop
        out: dict[str, float] = super().on_episode_end(step, buffer)
        return out


def _last_episode_return(buffer: ReplayBuffer) -> float:
    """Sum of rewards of the episode that just ended (the buffer's newest transitions)."""
    i = buffer.last_index
    total = float(buffer.rew[i])
    while i > 0 and not bool(buffer.terminated[i - 1] or buffer.truncated[i - 1]):
        i -= 1
        total += float(buffer.rew[i])
    return total


def _register() -> None:
    """Register the stopping agent when a run starts, not at import: importing this module
    (e.g. from a test) must not add an agent to the registry that others iterate over."""
    if AGENT not in AGENTS.names():
        AGENTS.register(AGENT, config=PETSConfig)(StoppingPETS)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["agent.num_particles=20", ...]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE, e.g. agent.horizon=30")
        node = out
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    return out


def run_one(data: dict[str, Any], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    run_fields = {
        **data["run"],
        "total_steps": args.episodes * args.max_episode_steps,
        "seed": seed,
        "run_root": Path(args.root),
        "progress": False,
        "tensorboard": False,
        "checkpoint_every": 0,
        "eval_every": 0,
    }
    cfg = TrainConfig(agent=from_dict(PETSConfig, data["agent"]), run=RunConfig(**run_fields))
    StoppingPETS.max_episodes, StoppingPETS.solved = args.episodes, args.solved
    StoppingPETS.returns, StoppingPETS.steps = [], 0
    _register()
    run = train_until_stopped(AGENT, cfg, Stop)
    stopped, rows = run.stopped, run.rows
    # the run's own rows for every episode but the last (logged after the hook)
    logged = [r["value"] for r in rows if r["key"] == "rollout/episode_return"]
    seen = StoppingPETS.returns  # summed from the buffer's float32 rewards
    if len(logged) != len(seen) - int(stopped) or not all(
        math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5) for a, b in zip(logged, seen, strict=False)
    ):
        raise RuntimeError(f"episode returns {seen} disagree with metrics.csv {logged}")
    returns = [*logged, seen[-1]] if stopped else logged
    fit = [r["value"] for r in rows if r["key"] == "model/fit_seconds"]
    solved_at = next((i + 1 for i, r in enumerate(returns) if r >= args.solved), None)
    return {
        "seed": seed,
        "episode_returns": [round(r, 2) for r in returns],
        "solved_episode": solved_at,
        "fit_seconds": round(sum(fit), 1),
        "env_steps": StoppingPETS.steps,
        "wall_s": round(run.wall_s, 1),
        "run_dir": str(run.run_dir),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# PETS on {report['env']}: the first {report['episodes']} training episodes",
        "",
        f"- command: `{report['command']}`",
        f"- commit: `{report['commit']}`; date: {report['date']}",
        f"- machine: {report['machine']}; torch {torch.__version__}, {report['threads']} thread(s)",
        f"- preset: `configs/pets/{report['preset']}.yaml`"
        + (f", overrides `{report['overrides']}`" if report["overrides"] else ""),
        f"- a run stops after {report['episodes']} training episodes, or at the first "
        f"episode returning at least {report['solved']:g}; episode 1 acts at random "
        "until the preset's `learning_starts`",
        "",
        "| seed | episode returns | solved in episode | env steps | model fit s | wall s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        solved = r["solved_episode"] if r["solved_episode"] is not None else "not solved"
        rets = ", ".join(f"{x:g}" for x in r["episode_returns"])
        lines.append(
            f"| {r['seed']} | {rets} | {solved} | {r['env_steps']} | "
            f"{r['fit_seconds']:g} | {r['wall_s']:.0f} |"
        )
    hits = [r["solved_episode"] for r in report["runs"] if r["solved_episode"] is not None]
    lines += [
        "",
        f"Solved within {report['episodes']} episodes: {len(hits)} of {len(report['runs'])} seeds.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="inverted_pendulum_cpu", help="configs/pets/NAME.yaml")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="preset overrides, e.g. agent.num_particles=20")  # fmt: skip
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--solved", type=float, default=1000.0)
    p.add_argument("--max-episode-steps", type=int, default=1000, help="the env's limit")
    p.add_argument("--root", default="/tmp/bench_pets_episodes")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    data = deep_merge(load_preset("pets", args.preset), parse_set(args.set))
    torch.set_num_threads(int(data["run"].get("torch_threads", 1)))
    report: dict[str, Any] = {
        "command": script_command("benchmarks/bench_pets_episodes.py", argv),
        "commit": git_commit(MEASURED_FILES) or "unknown",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": cpu_model(),
        "threads": torch.get_num_threads(),
        "env": data["run"]["env"],
        "preset": args.preset,
        "overrides": " ".join(args.set),
        "episodes": args.episodes,
        "solved": args.solved,
        "runs": [],
    }
    for seed in (int(s) for s in args.seeds.split(",")):
        append_run(report, run_one(data, seed, args), markdown, args.out)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
