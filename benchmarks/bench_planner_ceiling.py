"""Benchmark: the planner's ceiling — MPC with the *true* dynamics instead of a model.

PETS' return is bounded by two things: the model and the planner. Replacing the learned
model by the simulator itself (:class:`mbrl.models.oracle.OracleDynamics`) removes the
first, so what is left is the planner with its horizon and budget, scoring plans by the
env's own reward and termination. If a planner cannot solve a task with perfect
dynamics, no model will make PETS solve it at those settings.

For every planner × horizon × seed: one episode in the real env (up to ``--steps``),
each action chosen by the registered planner (``cem``, ``icem``, ``mppi``; population
``--population``, ``--iterations`` iterations, every other setting the planner's default)
optimising the sum of true rewards until the true termination over ``H`` steps, rolled
out by the oracle from the current observation for every candidate. Reported: the steps
survived (the return on InvertedPendulum, +1 per step), the final observation (on
InvertedPendulum ``[cart position, pole angle, velocities]``: position ±1 is the end of
the rail), planning ms per step and the wall time.

``--reward planning`` scores the plans with the env's registered ``planning_reward_fn``
(e.g. InvertedPendulum's ``alive · exp(−d²/0.6²)`` of the pole tip's distance ``d``
from its goal, PETS' cartpole cost, which PETS'
``reward_source: planning`` uses) instead of the task's reward; the reported return is
always the task's own.

    .venv/bin/python benchmarks/bench_planner_ceiling.py --env InvertedPendulum-v5 \\
        --planners cem,icem,mppi --horizons 15,30 --out results/planner_ceiling_ip
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from mbrl.bench import append_run
from mbrl.envs import get_env_spec
from mbrl.models.oracle import OracleDynamics
from mbrl.planners.base import Planner
from mbrl.registry import PLANNERS
from mbrl.rundir import cpu_model, git_commit, script_command
from mbrl.types import RewardFn

MEASURED_FILES = ("mbrl/planners", "mbrl/models/oracle.py", "benchmarks")


def true_returns(
    oracle: OracleDynamics, start: Tensor, actions: Tensor, reward_fn: RewardFn | None = None
) -> Tensor:
    """Sum of rewards until the true termination: ``actions (P, H, A)`` -> ``(P,)``; the
    true rewards, or ``reward_fn(obs, act, next_obs)`` of the true transitions."""
    obs = start.expand(actions.shape[0], -1).clone()
    alive = torch.ones(actions.shape[0])
    total = torch.zeros(actions.shape[0])
    for t in range(actions.shape[1]):
        next_obs, rew, terminated = oracle.step(obs, actions[:, t])
        if reward_fn is not None:
            rew = reward_fn(obs, actions[:, t], next_obs).reshape(-1)
        total += alive * rew
        alive = alive * (~terminated).float()
        obs = next_obs
    return total


def make_planner(name: str, env: gym.Env, horizon: int, pop: int, iters: int, seed: int) -> Planner:
    entry = PLANNERS.get(name)
    assert entry.config is not None
    cfg = entry.config(population_size=pop, num_iterations=iters)
    space = env.action_space
    assert isinstance(space, gym.spaces.Box)
    low = torch.as_tensor(space.low, dtype=torch.float32)
    high = torch.as_tensor(space.high, dtype=torch.float32)
    planner: Planner = entry.obj(
        low, high, horizon, cfg, "cpu", torch.Generator().manual_seed(seed)
    )
    return planner


def run_one(
    env_id: str, name: str, horizon: int, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    env = gym.make(env_id)
    oracle = OracleDynamics(env_id, nthread=1)
    planner = make_planner(name, env, horizon, args.population, args.iterations, seed)
    reward_fn = None
    if args.reward == "planning":
        reward_fn = get_env_spec(env_id).planning_reward_fn
        if reward_fn is None:
            raise SystemExit(f"--reward planning: {env_id} registers no planning_reward_fn.")
    obs, _ = env.reset(seed=seed)
    planner.reset()
    ret, steps, plan_s = 0.0, 0, 0.0
    terminated = truncated = False
    t0 = time.perf_counter()
    while steps < args.steps and not (terminated or truncated):
        start = torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1)
        tp = time.perf_counter()

        def objective(actions: Tensor, start: Tensor = start) -> Tensor:  # (1, P, H, A)
            return true_returns(oracle, start, actions[0], reward_fn)[None]

        act = planner.act(objective)[0]
        plan_s += time.perf_counter() - tp
        obs, rew, terminated, truncated, _ = env.step(act.numpy())
        ret += float(rew)
        steps += 1
    env.close()
    oracle.close()
    return {
        "planner": name,
        "reward": args.reward,
        "horizon": horizon,
        "seed": seed,
        "steps": steps,
        "return": ret,
        "terminated": bool(terminated),
        "final_obs": [round(float(x), 3) for x in obs],
        "plan_ms_per_step": 1000 * plan_s / max(steps, 1),
        "wall_s": time.perf_counter() - t0,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Planner ceiling on {report['env']}: MPC with the true dynamics",
        "",
        f"Population {report['population']}, {report['iterations']} iterations (other "
        "settings: each planner's defaults), one episode of at most "
        f"{report['steps']} steps per row; plans scored by "
        + (
            "the env's planning reward (`planning_reward_fn`)"
            if report.get("reward") == "planning"
            else "the true reward"
        )
        + " until the true termination, rolled out by `OracleDynamics`; returns are the "
        "task's own.",
        "",
        "| planner | H | seed | steps survived | return | terminated | final obs | plan ms/step |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['planner']} | {r['horizon']} | {r['seed']} | {r['steps']} | "
            f"{r['return']:.0f} | {r['terminated']} | {r['final_obs']} | "
            f"{r['plan_ms_per_step']:.0f} |"
        )
    lines += [
        "",
        f"Command: `{report['command']}`  ",
        f"Commit {report['commit']}, {report['date']}, {report['machine']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="InvertedPendulum-v5")
    p.add_argument("--planners", default="cem,icem,mppi")
    p.add_argument("--horizons", default="15,30")
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seeds", default="0")
    p.add_argument("--reward", default="task", choices=["task", "planning"],
                   help="score plans by the task's or the env's planning reward")  # fmt: skip
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.planners.split(","):
        PLANNERS.get(name)  # a clear error for an unknown planner before any work
    report: dict[str, Any] = {
        "command": script_command("benchmarks/bench_planner_ceiling.py", argv),
        "commit": git_commit(MEASURED_FILES) or "unknown",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": cpu_model(),
        "env": args.env,
        "population": args.population,
        "iterations": args.iterations,
        "reward": args.reward,
        "steps": args.steps,
        "runs": [],
    }
    for seed in (int(s) for s in args.seeds.split(",")):
        for horizon in (int(h) for h in args.horizons.split(",")):
            for name in args.planners.split(","):
                r = run_one(args.env, name, horizon, args, seed)
                append_run(report, r, markdown, args.out)
    print(markdown(report))
    return report


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
