"""The offline benchmark table (issue #5): RAVL, MOPO, MOBILE and BC on D4RL-format datasets.

For every dataset and seed it runs, one after the other (one process at a time, so the
runs do not fight over this machine's two cores):

1. ``mopo``: fits the dynamics ensemble on the dataset (seeded by the run's seed), then
   trains;
2. ``ravl`` and ``mobile`` with ``--agent.load-dynamics <that mopo run>``: the same
   fitted ensemble (all three papers' presets use the same 7×4×200 ensemble recipe), so
   the model is fitted once per dataset and seed instead of three times; the seed still
   varies the model across seeds;
3. ``bc``.

``--model-seed K`` fits one model per dataset (in the ``mopo`` run of seed K, run first)
and gives it to every run of that dataset, MOPO's other seeds included: a fit on 100k
rows takes 10–25 min here, so this saves two fits per dataset, at the price of seeds that
no longer vary the model (the table then says so). ``--model-run FILE=RUN`` gives every
model-based run on ``FILE`` the model of an existing run ``RUN`` (fitted earlier, e.g. by
a shorter table), so nothing is refitted.

Every run uses the preset of its algorithm for the dataset's D4RL task (``--preset``,
the papers' per-task values) with ``--run.total-steps UPDATES`` instead of the papers' 3M
(BC: 1M). A run that already finished (``summary.json``) is skipped and an unfinished one
is resumed, so the script can be stopped and restarted. At the end it calls
``mbrl table`` on everything under ``--root``.

Usage::

    python benchmarks/offline_table.py \\
        --dataset /work/datasets/HalfCheetah-v4/halfcheetah-v4-medium.hdf5=halfcheetah-medium \\
        --seeds 0 1 2 --updates 5000 --root /work/bench_runs/offline --out results/offline
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

AGENTS = ("mopo", "ravl", "mobile", "bc")
MODEL_USERS = ("ravl", "mobile")  # load the model the mopo run fitted


def find_run(root: Path, dataset: Path, agent: str, seed: int) -> Path | None:
    """The run directory of ``agent``/``seed`` on ``dataset`` under ``root`` (or None)."""
    runs = sorted((root / dataset.name / agent).glob(f"{seed}-*"))
    return runs[-1] if runs else None


def run_one(
    mbrl: str,
    agent: str,
    dataset: Path,
    preset: str,
    seed: int,
    args: argparse.Namespace,
    extra: list[str],
) -> Path:
    existing = find_run(args.root, dataset, agent, seed)
    if existing is not None and (existing / "summary.json").is_file():
        print(f"[skip] {agent} seed {seed} on {dataset.name}: {existing}", flush=True)
        return existing
    if existing is not None:
        cmd = [mbrl, "train", "--resume", str(existing)]
    else:
        cmd = [
            mbrl, "train", agent, "--preset", preset, "--dataset", str(dataset),
            "--run.seed", str(seed), "--run.total-steps", str(args.updates),
            "--run.eval-every", str(args.eval_every), "--run.eval-episodes",
            str(args.eval_episodes), "--run.checkpoint-every", str(args.eval_every),
            "--run.run-root", str(args.root), "--run.torch-threads", str(args.threads),
            "--run.no-progress", *extra,
        ]  # fmt: skip
    print(f"[run ] {' '.join(cmd)}", flush=True)
    t0 = time.time()
    log = args.root / "logs" / f"{dataset.stem}-{agent}-{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": "1"}
    with log.open("a") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    run = find_run(args.root, dataset, agent, seed)
    if rc != 0 or run is None:
        raise SystemExit(f"{agent} seed {seed} on {dataset} failed (exit {rc}); see {log}")
    print(f"[done] {agent} seed {seed}: {time.time() - t0:.0f} s -> {run}", flush=True)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset",
        action="append",
        required=True,
        help="PATH=PRESET (e.g. file.hdf5=halfcheetah-medium); repeat for several",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    p.add_argument("--updates", type=int, default=5000)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--model-seed",
        type=int,
        default=None,
        help="fit the model once per dataset, in the mopo run of this seed, and share it",
    )
    p.add_argument(
        "--model-run",
        action="append",
        default=[],
        help="FILE=RUN_DIR: load the model of this existing run for FILE (no fit)",
    )
    p.add_argument("--root", type=Path, default=Path("runs/offline_table"))
    p.add_argument("--out", type=Path, default=None, help="mbrl table --out prefix")
    p.add_argument(
        "--agent-args",
        action="append",
        default=[],
        help="AGENT:ARGS extra flags for one agent, e.g. 'ravl:--agent.num-critics 10'",
    )
    args = p.parse_args()
    mbrl = str(Path(sys.executable).with_name("mbrl"))
    extra_by_agent: dict[str, list[str]] = {}
    for item in args.agent_args:
        agent, _, flags = item.partition(":")
        extra_by_agent.setdefault(agent, []).extend(flags.split())
    model_runs: dict[Path, Path] = {}
    for item in args.model_run:
        file_s, _, run_s = item.partition("=")
        run_dir = Path(run_s).resolve()
        if not (run_dir / "config.yaml").is_file():
            raise SystemExit(f"--model-run {item}: {run_dir} is not a run directory.")
        model_runs[Path(file_s).resolve()] = run_dir
    t_start = time.time()
    for item in args.dataset:
        path_s, _, preset = item.partition("=")
        dataset = Path(path_s).resolve()
        if not dataset.is_file() or not preset:
            raise SystemExit(f"--dataset {item}: give an existing file and =PRESET.")
        shared: Path | None = model_runs.get(dataset)
        if shared is None and args.model_seed is not None:
            fit_extra = list(extra_by_agent.get("mopo", []))
            shared = run_one(mbrl, "mopo", dataset, preset, args.model_seed, args, fit_extra)
        for seed in args.seeds:
            model_run = shared
            for agent in args.agents:
                extra = list(extra_by_agent.get(agent, []))
                users = MODEL_USERS if shared is None else ("mopo", *MODEL_USERS)
                fits_here = (
                    agent == "mopo" and seed == args.model_seed and dataset not in model_runs
                )
                if agent in users and not fits_here:
                    model_run = model_run or find_run(args.root, dataset, "mopo", seed)
                    if model_run is not None:
                        extra += ["--agent.load-dynamics", str(model_run)]
                run = run_one(mbrl, agent, dataset, preset, seed, args, extra)
                if agent == "mopo" and shared is None:
                    model_run = run
    print(f"total wall time {time.time() - t_start:.0f} s", flush=True)
    if args.out is not None:
        cmd = [mbrl, "table", str(args.root), "--out", str(args.out)]
        print(" ".join(cmd), flush=True)
        subprocess.check_call(cmd)


if __name__ == "__main__":
    main()
