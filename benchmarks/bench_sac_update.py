"""Benchmark: one SAC gradient update, ours (``mbrl.agents.sac.SAC``) vs stable-baselines3.

Both at the paper's sizes (Haarnoja et al. 2018, Table 1): actor and 2 critics of
2×256 ReLU MLPs, batch 256, Adam 3e-4, automatic entropy tuning (target −|A|), τ 0.005,
on HalfCheetah's dimensions (obs 17, act 6), CPU, eager PyTorch. The data are random
numbers (10k transitions, no terminations): only shapes matter for timing.

Contestants, timed in one process and interleaved round by round (ours, ours with
sampling, SB3, ours, ...), because absolute times drift on a shared 2-core machine:

    * ``ours: update``: ``SAC.update(batch)`` on one fixed pre-sampled ``TransitionBatch``;
    * ``ours: sample + update``: ``ReplayBuffer.sample(256)`` then ``SAC.update``;
    * ``SB3: train``: ``SAC.train(gradient_steps=K, batch_size=256)`` divided by ``K``;
      SB3 samples its own replay buffer inside ``train``, so it compares with the
      ``sample + update`` row.

Each round runs a contestant for at least ``--min-seconds``; the table gives the best
and the median round. The ratio is SB3's time over ours, per round (same round index),
then best and median of those. With ``--profile`` (default: only when ours is less than
``--target`` times faster than SB3) 20 of our updates are profiled with
``torch.profiler`` and the top ops by self CPU time are listed.

Prints JSON and a markdown table; ``--out PREFIX`` also writes ``PREFIX.json`` and
``PREFIX.md``::

    .venv/bin/python benchmarks/bench_sac_update.py --out results/sac_update
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from stable_baselines3 import SAC as SB3SAC
from stable_baselines3.common.logger import configure

from mbrl.agents.sac import SAC, SACConfig
from mbrl.bench import write_report
from mbrl.data.buffer import ReplayBuffer
from mbrl.rundir import cpu_model, git_commit, script_command

OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah
BATCH = 256
CONTESTANTS = ("ours: update", "ours: sample + update", "SB3: train")
MATMUL_OPS = ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm")


class SpacesOnlyEnv(gym.Env[np.ndarray, np.ndarray]):
    """HalfCheetah's spaces and nothing else: SB3 needs an env to build its policy.

    Never stepped by the benchmark (the replay buffer is filled directly).
    """

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return np.zeros(OBS_DIM, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return np.zeros(OBS_DIM, np.float32), 0.0, False, False, {}


def random_transitions(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random transitions with HalfCheetah's dimensions (timing only)."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, OBS_DIM), dtype=np.float32)
    return {
        "obs": obs,
        "act": rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        "rew": rng.standard_normal(n, dtype=np.float32),
        "next_obs": obs + 0.1 * rng.standard_normal((n, OBS_DIM), dtype=np.float32),
        "terminated": np.zeros(n, dtype=bool),  # HalfCheetah never terminates
    }


def make_ours(data: dict[str, np.ndarray]) -> tuple[SAC, ReplayBuffer]:
    torch.manual_seed(0)
    cfg = SACConfig(batch_size=BATCH, hidden_sizes=(256, 256), num_critics=2, learn_alpha=True)
    sac = SAC(OBS_DIM, ACT_DIM, cfg, -np.ones(ACT_DIM), np.ones(ACT_DIM), "cpu")
    n = len(data["rew"])
    buf = ReplayBuffer(n, OBS_DIM, ACT_DIM, "cpu", seed=0)
    buf.add_batch(
        data["obs"],
        data["act"],
        data["rew"],
        data["next_obs"],
        data["terminated"],
        np.zeros(n, dtype=bool),
    )
    return sac, buf


def make_sb3(data: dict[str, np.ndarray]) -> SB3SAC:
    model = SB3SAC(
        "MlpPolicy",
        SpacesOnlyEnv(),
        learning_rate=3e-4,
        buffer_size=len(data["rew"]),
        learning_starts=0,
        batch_size=BATCH,
        tau=0.005,
        gamma=0.99,
        train_freq=1,
        gradient_steps=1,
        ent_coef="auto",
        target_entropy="auto",
        policy_kwargs=dict(net_arch=[256, 256], n_critics=2),
        device="cpu",
        seed=0,
    )
    rb = model.replay_buffer
    assert rb is not None
    for i in range(len(data["rew"])):  # SB3's buffer takes one (n_envs=1) step per add
        rb.add(
            data["obs"][i : i + 1],
            data["next_obs"][i : i + 1],
            data["act"][i : i + 1],
            data["rew"][i : i + 1],
            data["terminated"][i : i + 1],
            [{}],
        )
    model.set_logger(configure(None, []))  # train() records its losses to a logger
    return model


def time_round(fn: Callable[[], int], min_seconds: float) -> float:
    """Call ``fn`` (which returns how many updates it did) for ``min_seconds``: s/update."""
    done, t0 = 0, time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / done


def profile_ours(
    sac: SAC, buf: ReplayBuffer, n_updates: int = 20, top: int = 15
) -> tuple[list[dict[str, Any]], float, float]:
    """Profile ``n_updates`` of ``sample + update``.

    Returns the top ops by self CPU time, the total and the matmul self CPU µs/update.
    """
    from torch.profiler import ProfilerActivity, profile, schedule

    # The profiler's own warm-up steps are discarded: its first recorded step can carry
    # one-off start-up stalls that would swamp 20 updates.
    sched = schedule(wait=1, warmup=3, active=n_updates, repeat=1)
    with profile(activities=[ProfilerActivity.CPU], schedule=sched) as prof:
        for _ in range(1 + 3 + n_updates):
            sac.update(buf.sample(BATCH))
            prof.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    rows = [
        {
            "op": e.key,
            "calls_per_update": e.count / n_updates,
            "self_cpu_us_per_update": e.self_cpu_time_total / n_updates,
            "self_cpu_share": e.self_cpu_time_total / total,
        }
        for e in events[:top]
    ]
    return rows, total / n_updates, matmul / n_updates


def bench_threads(
    threads: int, data: dict[str, np.ndarray], rounds: int, min_seconds: float, chunk: int
) -> dict[str, Any]:
    """Interleaved rounds of all contestants with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    sac, buf = make_ours(data)
    model = make_sb3(data)
    fixed = buf.sample(BATCH)

    def ours_update() -> int:
        for _ in range(chunk):
            sac.update(fixed)
        return chunk

    def ours_sample_update() -> int:
        for _ in range(chunk):
            sac.update(buf.sample(BATCH))
        return chunk

    def sb3_train() -> int:
        model.train(gradient_steps=chunk, batch_size=BATCH)
        return chunk

    fns = dict(zip(CONTESTANTS, (ours_update, ours_sample_update, sb3_train), strict=True))
    for fn in fns.values():  # warm-up: allocator, Adam state, first-call overheads
        time_round(fn, min(0.5, min_seconds))
    per_round: dict[str, list[float]] = {k: [] for k in CONTESTANTS}
    for _ in range(rounds):
        for name, fn in fns.items():
            per_round[name].append(time_round(fn, min_seconds))
    rows = {}
    for name, secs in per_round.items():
        rows[name] = {
            "ms_per_update_rounds": [1e3 * s for s in secs],
            "ms_per_update_best": 1e3 * min(secs),
            "ms_per_update_median": 1e3 * statistics.median(secs),
            "updates_per_s_best": 1 / min(secs),
            "updates_per_s_median": 1 / statistics.median(secs),
        }
    sb3 = per_round["SB3: train"]
    ratios = {}
    for name in CONTESTANTS[:2]:
        r = [s / o for s, o in zip(sb3, per_round[name], strict=True)]
        ratios[f"SB3 / {name}"] = {
            "per_round": r,
            "median": statistics.median(r),
            "of_best": min(sb3) / min(per_round[name]),
        }
    return {"threads": threads, "rows": rows, "ratios": ratios, "_sac": sac, "_buf": buf}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# SAC update speed: ours vs stable-baselines3",
        "",
        f"- command: `{report['command']}`",
        f"- git: `{report['git_rev']}`; date: {report['date']}",
        f"- machine: {report['machine']}; torch {report['torch']}; "
        f"stable-baselines3 {report['sb3']}; load average before/after: "
        f"{report['loadavg_before']} / {report['loadavg_after']}",
        f"- setup: {report['setup']}",
        f"- timing: {report['timing']}",
        "",
    ]
    target = report["target_ratio"]
    for res in report["results"]:
        t = res["threads"]
        lines += [
            f"## {t} torch thread{'s' if t > 1 else ''}",
            "",
            "| contestant | ms / update (best) | ms / update (median) | updates/s (best) | "
            "updates/s (median) |",
            "|---|---|---|---|---|",
        ]
        for name, r in res["rows"].items():
            lines.append(
                f"| {name} | {r['ms_per_update_best']:.2f} | {r['ms_per_update_median']:.2f} | "
                f"{r['updates_per_s_best']:.0f} | {r['updates_per_s_median']:.0f} |"
            )
        lines += ["", "| speed-up (SB3 time / ours) | median of per-round ratios | of bests |"]
        lines.append("|---|---|---|")
        for name, r in res["ratios"].items():
            lines.append(f"| {name} | {r['median']:.2f}× | {r['of_best']:.2f}× |")
        lines.append("")
    lines += [
        f"## Target: ours at least {target:g}× faster than SB3",
        "",
        report["verdict"],
        "",
    ]
    if report.get("profile"):
        lines += [
            f"## Profile: 20 of our `sample + update` steps, "
            f"{report['profile_threads']} thread(s), top ops by self CPU time",
            "",
            "| op | calls / update | self CPU µs / update | share |",
            "|---|---|---|---|",
        ]
        for p in report["profile"]:
            lines.append(
                f"| `{p['op']}` | {p['calls_per_update']:.0f} | "
                f"{p['self_cpu_us_per_update']:.0f} | {100 * p['self_cpu_share']:.1f}% |"
            )
        mm = report["profile_matmul_us_per_update"]
        sb3 = next(r for r in report["results"] if r["threads"] == report["profile_threads"])
        sb3_ms = sb3["rows"]["SB3: train"]["ms_per_update_median"]
        lines += [
            "",
            f"Matrix multiplies (`{'`, `'.join(MATMUL_OPS)}`) take {mm / 1e3:.2f} ms of "
            f"{report['profile_total_us_per_update'] / 1e3:.2f} ms self CPU time per update "
            f"under the profiler (`ProfilerStep*` is Python time between ops). With every "
            f"other op free, ours would be at most {sb3_ms / (mm / 1e3):.2f}× faster than SB3's "
            f"{sb3_ms:.2f} ms at {report['profile_threads']} thread(s).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per contestant")
    p.add_argument("--min-seconds", type=float, default=2.0, help="minimum length of a round")
    p.add_argument("--chunk", type=int, default=25, help="updates per timed call (SB3's K)")
    p.add_argument("--num-transitions", type=int, default=10_000)
    p.add_argument("--target", type=float, default=2.0, help="wanted SB3/ours speed-up")
    p.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="profile 20 of our updates (auto: only if the target is missed)",
    )
    p.add_argument("--out", type=str, default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)

    report: dict[str, Any] = {
        "command": script_command(__file__, argv),
        "git_rev": git_commit() or "unknown",
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()}-core CPU, no GPU ({cpu_model()})",
        "torch": torch.__version__,
        "sb3": stable_baselines3.__version__,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "setup": (
            f"{args.num_transitions} random transitions with HalfCheetah dims (obs 17, act 6; "
            "random numbers: timing only) in each replay buffer; actor and 2 critics 2x256 "
            "ReLU, batch 256, Adam 3e-4, auto-entropy (target -6), tau 0.005, gamma 0.99; "
            "CPU, eager; SB3 SAC(policy_kwargs=dict(net_arch=[256, 256]), batch_size=256, "
            "learning_starts=0, train_freq=1, gradient_steps=1), buffer filled with "
            "replay_buffer.add"
        ),
        "timing": (
            f"{args.rounds} interleaved rounds of >= {args.min_seconds:g} s per contestant "
            f"(ours, ours + sampling, SB3, ...), {args.chunk} updates per timed call "
            f"(SB3: train(gradient_steps={args.chunk}) / {args.chunk}), after a warm-up; "
            "best and median round"
        ),
        "target_ratio": args.target,
    }
    data = random_transitions(args.num_transitions)
    results = [
        bench_threads(t, data, args.rounds, args.min_seconds, args.chunk) for t in args.threads
    ]
    # Verdict on the fair pair (both sample from a replay buffer), median of rounds.
    key = "SB3 / ours: sample + update"
    met = all(r["ratios"][key]["median"] >= args.target for r in results)
    speedups = ", ".join(f"{r['ratios'][key]['median']:.2f}× at {r['threads']}T" for r in results)
    report["target_met"] = met
    report["verdict"] = (
        f"{'Met' if met else 'Not met'}: ours (sample + update) vs SB3 train, median speed-up "
        f"{speedups} (target {args.target:g}×)."
    )
    if args.profile == "always" or (args.profile == "auto" and not met):
        fastest = min(
            results, key=lambda r: r["rows"]["ours: sample + update"]["ms_per_update_median"]
        )
        torch.set_num_threads(fastest["threads"])
        report["profile_threads"] = fastest["threads"]
        (
            report["profile"],
            report["profile_total_us_per_update"],
            report["profile_matmul_us_per_update"],
        ) = profile_ours(fastest["_sac"], fastest["_buf"])
    report["results"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    write_report(report, markdown(report), args.out)
    return report


if __name__ == "__main__":
    main()
