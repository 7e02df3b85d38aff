"""Benchmark: Diffuser's cost, one training update and one planning call per action.

For each configuration (a ``configs/diffuser`` preset: the paper's net, or a CPU-sized
one) the Diffuser agent is built on a random dataset with the env's dimensions (HalfCheetah-v4
17/6 or Hopper-v4 11/3; 5 episodes of 1,000 steps, random numbers: only shapes matter for
timing) and timed:

    * ``update``: ``DiffuserAgent.update`` (the denoiser's Adam step on ``grad_accumulate``
      batches and the value net's), median over ``--updates`` calls after 2 warm-up calls;
    * ``plan``: ``DiffuserAgent.act`` on one observation (``plan_batch`` candidates, value
      guidance, EMA nets), median over ``--plans`` calls, for each number of denoising
      steps in ``--steps``: DDPM (the paper's sampler) at ``N``, DDIM with fewer.

Threads: ``--threads`` (default 1, as the project's CPU runs). Prints JSON and a markdown
table; ``--out PREFIX`` also writes ``PREFIX.json`` and ``PREFIX.md``::

    .venv/bin/python benchmarks/bench_diffuser_latency.py --task halfcheetah \\
        --presets halfcheetah-medium halfcheetah-medium-cpu --steps 20 10 5 2 \\
        --out results/diffuser_latency

With ``--run-dir RUN [RUN ...]`` the latest checkpoint of each trained Diffuser run is
evaluated instead (``--episodes`` deterministic-seed episodes in the real env, the offline
loop's evaluation) once per number of denoising steps: the score and the wall time per
action (planning plus the env step), i.e. the effect of the number of steps on both::

    .venv/bin/python benchmarks/bench_diffuser_latency.py --run-dir runs/.../diffuser/0-... \\
        --steps 20 10 5 2 --episodes 10 --out results/diffuser_steps_halfcheetah
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from mbrl.agents.diffuser import DiffuserAgent, DiffuserConfig
from mbrl.checkpoint import find_latest, load_checkpoint
from mbrl.config import RunConfig, from_dict, load_preset
from mbrl.data.d4rl import D4RLDataset, save_d4rl
from mbrl.errors import MbrlError
from mbrl.rundir import MetricsLogger, RunDir, cpu_model, git_commit, script_command
from mbrl.train import NullLogger, RunContext, TrainConfig, load_run_config

TASKS = {"halfcheetah": ("HalfCheetah-v4", 17, 6), "hopper": ("Hopper-v4", 11, 3)}


def random_dataset(env_id: str, obs_dim: int, act_dim: int, path: Path) -> Path:
    """5 episodes of 1,000 random steps with the env's dims (timing only)."""
    rng = np.random.default_rng(0)
    n = 5_000
    timeouts = np.zeros(n, dtype=bool)
    timeouts[999::1000] = True
    arrays = {
        "observations": rng.standard_normal((n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "rewards": rng.standard_normal(n).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": timeouts,
    }
    ds = D4RLDataset.from_arrays(arrays, where="benchmark", metadata={"env_id": env_id})
    return save_d4rl(ds, path, overwrite=True)


def build_agent(preset: str, data: Path, run_dir: Path, **overrides: Any) -> DiffuserAgent:
    agent_cfg = from_dict(DiffuserConfig, load_preset("diffuser", preset).get("agent", {}))
    agent_cfg = dataclasses.replace(agent_cfg, **overrides)
    cfg = TrainConfig(agent=agent_cfg, run=RunConfig(dataset=str(data), seed=0))
    ctx = RunContext(
        run_dir=RunDir(run_dir),
        logger=cast(MetricsLogger, NullLogger()),
        device=torch.device("cpu"),
    )
    return DiffuserAgent(cfg, ctx)


def median_seconds(fn: Any, calls: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_preset(
    preset: str, data: Path, tmp: Path, steps: list[int], updates: int, plans: int
) -> dict[str, Any]:
    agent = build_agent(preset, data, tmp)
    a = agent.dcfg
    n_params = sum(p.numel() for p in agent.net.parameters())
    n_value = sum(p.numel() for p in agent.value.parameters())
    counter = [0]

    def one_update() -> None:
        counter[0] += 1
        agent.update(counter[0])

    update_s = median_seconds(one_update, updates)
    obs = agent.data.dataset.observations[0]
    rows = []
    for k in steps:
        if k > a.n_diffusion_steps:
            continue
        # all N steps: the paper's DDPM sampler; fewer: DDIM with k steps
        full = k == a.n_diffusion_steps
        sampler = "ddpm" if full else "ddim"
        planner = build_agent(preset, data, tmp, sampler=sampler, sample_steps=None if full else k)
        planner.load_state_dict(agent.state_dict())
        rows.append(
            {
                "denoising_steps": k,
                "sampler": sampler,
                "plan_s": median_seconds(lambda p=planner: p.act(obs), plans),
            }
        )
    return {
        "preset": preset,
        "horizon": a.horizon,
        "dim": a.dim,
        "dim_mults": list(a.dim_mults),
        "attention": a.attention,
        "plan_batch": a.plan_batch,
        "n_guide_steps": a.n_guide_steps,
        "denoiser_params": n_params,
        "value_params": n_value,
        "update_s": update_s,
        "plans": rows,
    }


def bench_run(run_path: Path, steps: list[int], episodes: int) -> dict[str, Any]:
    """Score and time per action of a trained run's latest checkpoint, per step count."""
    run_dir = RunDir.open(run_path)
    cfg = load_run_config(run_dir, DiffuserConfig)
    ckpt = find_latest(run_dir.path)
    if ckpt is None:
        raise MbrlError(f"{run_dir.path} holds no checkpoint; train it first.")
    state = load_checkpoint(ckpt, map_location="cpu")
    ctx = RunContext(
        run_dir=run_dir, logger=cast(MetricsLogger, NullLogger()), device=torch.device("cpu")
    )
    rows: list[dict[str, Any]] = []
    agent: DiffuserAgent | None = None
    for k in steps:
        if k > cfg.agent.n_diffusion_steps:
            continue
        full = k == cfg.agent.n_diffusion_steps
        # all N steps: the paper's DDPM sampler (whatever the run planned with); fewer:
        # DDIM with k steps
        agent_cfg = dataclasses.replace(
            cfg.agent, sampler="ddpm" if full else "ddim", sample_steps=None if full else k
        )
        agent = DiffuserAgent(TrainConfig(agent=agent_cfg, run=cfg.run), ctx)
        agent.load_state_dict(state["agent"])
        t0 = time.perf_counter()
        out = agent.evaluate(episodes=episodes)
        elapsed = time.perf_counter() - t0
        actions = out["eval/length"] * episodes
        rows.append(
            {
                "denoising_steps": k,
                "sampler": agent_cfg.sampler,
                "plan_s": elapsed / actions,
                **{key.removeprefix("eval/"): value for key, value in out.items()},
            }
        )
    a = cfg.agent
    if agent is None:
        raise MbrlError(
            f"no --steps value is <= the run's n_diffusion_steps ({a.n_diffusion_steps})."
        )
    return {
        "env": agent.spec.id,
        "obs_dim": agent.obs_dim,
        "act_dim": agent.act_dim,
        "preset": str(run_path),
        "step": int(state["step"]),
        "horizon": a.horizon,
        "dim": a.dim,
        "dim_mults": list(a.dim_mults),
        "attention": a.attention,
        "plan_batch": a.plan_batch,
        "n_guide_steps": a.n_guide_steps,
        "update_s": float("nan"),
        "plans": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Diffuser latency ({result['env']} dims {result['obs_dim']}/{result['act_dim']}, "
        f"{result['threads']} torch thread(s))",
        "",
        f"Command: `{result['command']}`  ",
        f"Commit: {result['commit']}, date: {result['date']}, machine: {result['machine']}",
        "",
        "| preset / run | H | dim × mults | candidates | update (ms) | denoising steps "
        "| sampler | plan per action (ms) | return | normalized score |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        for p in r["plans"]:
            ret = f"{p['return']:.1f} ± {p['return_std']:.1f}" if "return" in p else "–"
            score = f"{p['normalized_score']:.1f}" if "normalized_score" in p else "–"
            update = "–" if np.isnan(r["update_s"]) else f"{1e3 * r['update_s']:.1f}"
            lines.append(
                f"| {r['preset']} | {r['horizon']} | {r['dim']} × {r['dim_mults']}"
                f"{' + attn' if r['attention'] else ''} | {r['plan_batch']} "
                f"| {update} | {p['denoising_steps']} | {p['sampler']} "
                f"| {1e3 * p['plan_s']:.1f} | {ret} | {score} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="halfcheetah")
    parser.add_argument("--presets", nargs="+", default=None)
    parser.add_argument("--steps", nargs="+", type=int, default=[20, 10, 5, 2])
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--plans", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--run-dir", nargs="+", type=Path, default=None, help="trained runs")
    parser.add_argument("--episodes", type=int, default=10, help="with --run-dir")
    parser.add_argument("--out", default=None, help="write PREFIX.json and PREFIX.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env_id, obs_dim, act_dim = TASKS[args.task]
    presets = args.presets or [f"{args.task}-medium", f"{args.task}-medium-cpu"]
    if args.run_dir:
        results = [bench_run(path, args.steps, args.episodes) for path in args.run_dir]
        env_id, obs_dim, act_dim = (results[0][k] for k in ("env", "obs_dim", "act_dim"))
    else:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            data = random_dataset(env_id, obs_dim, act_dim, tmp / f"{args.task}_random.hdf5")
            results = [
                bench_preset(p, data, tmp, args.steps, args.updates, args.plans) for p in presets
            ]
    out = {
        "env": env_id,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "threads": args.threads,
        "command": script_command(__file__),
        "commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": cpu_model(),
        "results": results,
    }
    text = markdown(out)
    print(json.dumps(out, indent=2))
    print(text)
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(out, indent=2) + "\n")
        Path(f"{args.out}.md").write_text(text)


if __name__ == "__main__":
    main()
