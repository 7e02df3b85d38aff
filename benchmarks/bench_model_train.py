"""Benchmark: ensemble training speed (seconds per epoch) with the model trainer.

The PETS/MBPO ensemble (7 members × 4 hidden layers × 200, SiLU) on transitions with
HalfCheetah's dimensions (obs 17, act 6), batch 256 per member, Adam, through
:class:`mbrl.models.trainer.ModelTrainer` exactly as an agent uses it (holdout split,
per-epoch holdout evaluation, snapshots). The data are random numbers: only the shapes
matter for timing, not what is learned.

Measured, each in a fresh process (OpenMP reads its settings once, at start-up):

    * seconds per training epoch with 1 and 2 torch threads, with OpenMP's default
      (spinning) wait policy and with ``OMP_WAIT_POLICY=PASSIVE``;
    * milliseconds per gradient step of the same settings while one extra busy process
      occupies a core (as when a simulator or another run shares the machine);
    * a short full ``fit`` with the progress bar on (fastest setting).

Prints JSON and a markdown table; ``--out PREFIX`` also writes ``PREFIX.json`` and
``PREFIX.md``::

    .venv/bin/python benchmarks/bench_model_train.py --out results/model_train
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

import torch

from mbrl.bench import write_report
from mbrl.models.ensemble import EnsembleConfig, ProbabilisticEnsemble
from mbrl.models.trainer import ModelTrainer, TrainerConfig
from mbrl.rundir import cpu_model, git_commit, script_command

OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah
WAIT_POLICIES = ("default", "PASSIVE")


def random_transitions(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` random transitions with HalfCheetah's dimensions (timing only)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS_DIM, generator=g)
    act = torch.rand(n, ACT_DIM, generator=g) * 2 - 1
    next_obs = obs + 0.1 * torch.randn(n, OBS_DIM, generator=g)
    rew = torch.randn(n, generator=g)
    return {"obs": obs, "act": act, "rew": rew, "next_obs": next_obs}


def timed_fit(
    num_transitions: int,
    threads: int,
    epochs: int,
    progress: bool = False,
    max_grad_steps: int | None = None,
    max_train_seconds: float | None = None,
) -> dict[str, Any]:
    """Fit a fresh default ensemble; per-epoch timings come from the trainer's log."""
    torch.set_num_threads(threads)
    data = random_transitions(num_transitions)
    torch.manual_seed(0)
    model = ProbabilisticEnsemble(OBS_DIM, ACT_DIM, EnsembleConfig())
    cfg = TrainerConfig(
        max_epochs=epochs,
        patience=10**6,
        max_grad_steps=max_grad_steps,
        max_train_seconds=max_train_seconds,
    )
    trainer = ModelTrainer(model, cfg)
    logs: list[dict[str, float]] = []
    t0 = time.perf_counter()
    res = trainer.fit(
        data["obs"],
        data["act"],
        data["rew"],
        data["next_obs"],
        progress=progress,
        log_fn=lambda step, m: logs.append(m),
    )
    wall = time.perf_counter() - t0
    train_s = [m["model/epoch_seconds"] for m in logs]
    out: dict[str, Any] = {
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "ms_per_grad_step": 1e3 * sum(train_s) / res.grad_steps,
    }
    if max_grad_steps is not None:  # a budget-cut epoch: only the per-step time counts
        return out
    steps_per_epoch = math.ceil(res.num_train / cfg.batch_size)
    # a setting too slow to finish its epochs in the time budget: per-step time x steps
    extrapolated = res.stop_reason == "max_train_seconds"
    mean_epoch = (
        out["ms_per_grad_step"] * steps_per_epoch / 1e3
        if extrapolated
        else sum(train_s) / len(train_s)
    )
    return out | {
        "epochs": res.epochs,
        "num_train": res.num_train,
        "num_holdout": res.num_holdout,
        "grad_steps_per_epoch": steps_per_epoch,
        "train_seconds_per_epoch": train_s,
        "mean_train_seconds_per_epoch": mean_epoch,
        "extrapolated_from_steps": extrapolated,
        "mean_holdout_eval_seconds": sum(m["model/holdout_seconds"] for m in logs) / len(logs),
        "fit_wall_seconds": wall,
        "stop_reason": res.stop_reason,
    }


def run_worker(job: dict[str, Any], policy: str, busy: bool = False) -> dict[str, Any]:
    """Run ``timed_fit(**job)`` in a fresh interpreter with the given OpenMP wait policy."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    spinner = None
    if busy:  # one extra process that keeps a core busy for the whole measurement
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(job)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def markdown(report: dict[str, Any]) -> str:
    contended = {(c["threads"], c["omp_wait_policy"]): c for c in report["contended"]}
    rows = []
    for r in report["uncontended"]:
        c = contended.get((r["threads"], r["omp_wait_policy"]))
        busy = f"{c['ms_per_grad_step']:.1f}" if c else "–"
        rows.append(
            f"| {r['threads']} | {r['omp_wait_policy']} | "
            f"{r['mean_train_seconds_per_epoch']:.2f}{'*' if r['extrapolated_from_steps'] else ''}"
            f" | {r['ms_per_grad_step']:.1f} | "
            f"{r['mean_holdout_eval_seconds']:.3f} | {busy} |"
        )
    fit = report["short_fit"]
    return "\n".join(
        [
            "# Model training speed",
            "",
            f"- command: `{report['command']}`",
            f"- git: `{report['git_rev']}`; date: {report['date']}",
            f"- machine: {report['machine']}; torch {report['torch']}; "
            f"load average before/after: {report['loadavg_before']} / {report['loadavg_after']}",
            f"- setup: {report['setup']}",
            "",
            "| torch threads | OMP_WAIT_POLICY | s / epoch (train) | ms / grad step | "
            "holdout eval s | ms / grad step, 1 core busy elsewhere |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "\\* extrapolated: per-step time x steps per epoch (the setting was too slow to "
            "finish its epochs within --max-seconds-per-setting).",
            "",
            f"Short full `fit` ({fit['epochs']} epochs, {fit['threads']} thread(s), "
            f"OMP_WAIT_POLICY {fit['omp_wait_policy']}, progress bar on): "
            f"{fit['fit_wall_seconds']:.1f} s wall, "
            f"{fit['mean_train_seconds_per_epoch']:.2f} s per training epoch.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--num-transitions", type=int, default=200_000)
    p.add_argument("--timing-epochs", type=int, default=2, help="epochs per setting")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--fit-epochs", type=int, default=3, help="epochs of the short full fit")
    p.add_argument(
        "--contention-steps",
        type=int,
        default=40,
        help="gradient steps timed per setting next to a busy process (0: skip)",
    )
    p.add_argument(
        "--max-seconds-per-setting",
        type=float,
        default=90.0,
        help="cap on the epoch timing of one setting; slower ones are extrapolated from "
        "their per-step time (marked *)",
    )
    p.add_argument("--out", type=str, default=None, help="write OUT.json and OUT.md")
    p.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:  # child process: one measurement, JSON on the last line
        print(json.dumps(timed_fit(**json.loads(args.worker))))
        return {}

    n = args.num_transitions
    report: dict[str, Any] = {
        "command": script_command(__file__, argv),
        "git_rev": git_commit() or "unknown",
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()}-core CPU, no GPU ({cpu_model()})",
        "torch": torch.__version__,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "setup": (
            f"{n} random transitions with HalfCheetah dims (obs 17, act 6; random numbers: "
            "timing only), ensemble 7 members x 4x200 SiLU, batch 256 per member, Adam lr "
            "1e-3, holdout 20% capped at 5000, eager PyTorch, each setting in a fresh process"
        ),
    }
    settings = [(t, pol) for pol in WAIT_POLICIES for t in args.threads]
    report["uncontended"] = [
        run_worker(
            {
                "num_transitions": n,
                "threads": t,
                "epochs": args.timing_epochs,
                "max_train_seconds": args.max_seconds_per_setting,
            },
            pol,
        )
        for t, pol in settings
    ]
    report["contended"] = [
        run_worker(
            {
                "num_transitions": n,
                "threads": t,
                "epochs": 1,
                "max_grad_steps": args.contention_steps,
            },
            pol,
            busy=True,
        )
        for t, pol in (settings if args.contention_steps > 0 else [])
    ]
    best = min(report["uncontended"], key=lambda r: r["mean_train_seconds_per_epoch"])
    report["short_fit"] = run_worker(
        {
            "num_transitions": n,
            "threads": best["threads"],
            "epochs": args.fit_epochs,
            "progress": True,
        },
        best["omp_wait_policy"],
    )
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    write_report(report, markdown(report), args.out)
    return report


if __name__ == "__main__":
    main()
