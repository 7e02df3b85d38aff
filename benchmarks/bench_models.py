"""Dynamics-model comparison: ensemble vs Koopman vs transformer on the same data.

For every ``--dataset`` (a D4RL-format file, optionally cut to ``--max-transitions``
transitions of whole trajectories drawn at random with ``--seed``):

1. **Open-loop error.** ``mbrl model eval`` (:func:`mbrl.model_eval.model_eval`) fits
   ``ensemble``, ``koopman`` and ``transformer`` (their default configs; change any field
   with ``--set``, e.g. ``--set trainer.max_epochs=20 koopman.latent_dim=32``) on the
   same training trajectories and scores them on the same held-out trajectories: the
   normalized MSE (per-dimension MSE / data variance, 1.0 = predicting the mean) of the
   observation predicted ``h`` steps ahead from the recorded actions, at
   ``--horizons`` (1, 10, 25, 50). The reference rows ``copy-obs`` (no change) and
   ``linear`` (least squares) come from the same run.
2. **Training time to convergence.** Wall seconds and epochs of each fit (early
   stopping on a holdout share of the training data, ``patience`` epochs), from the
   same run's ``summary.json``.
3. **Rollout throughput**, side by side in one process: ``--repeats`` interleaved
   rounds of at least ``--min-time`` seconds per contestant, best round kept, on one
   batch of ``--candidates`` × ``--particles`` rollouts (rows) over ``--rollout-horizon``
   steps from the dataset's first observation, random actions in [-1, 1]:

   * ``ensemble step loop``: PETS' objective,
     :meth:`~mbrl.models.model_env.ModelEnv.evaluate_action_sequences` with TS∞
     (``fixed_member``) — ``H`` sequential ``ModelEnv.step`` calls (forward, sampling,
     Δobs, the task's reward and termination);
   * ``ensemble forward loop``: the same ``H`` steps as bare ``predict_grouped`` calls
     plus ``obs += Δobs`` (no sampling, reward or termination), a lower bound;
   * ``koopman predict_sequence (scan|fft|recurrent)``: the Koopman model's multi-step
     prediction of the whole horizon, each member on its share of the rows
     (``obs0 (E, B/E, O)``), unrolled by the associative scan, by FFT convolution, or
     step by step; without its reward decoder when the task has a reward function (as
     ``ModelEnv`` runs it, and as the ensemble step loop scores rewards);
   * ``koopman PETS objective (scan|fft|recurrent)``: ``evaluate_action_sequences`` with
     the Koopman model (and ``koopman PETS objective``: its configured unroll, ``auto``).
     Its members are deterministic, so the particles of one sequence that share a member
     coincide and the objective unrolls each (sequence, member) pair once: 400 × 5 rows
     for 5 members instead of 400 × 20. The Koopman row of the main table, and the issue
     check, is the faster of its parallel unrolls (scan/FFT) here;
   * ``transformer predict_sequence_grouped``: KV-cached rollouts, each row by its own
     member, and ``transformer PETS objective`` (the same through ``ModelEnv``).

   Throughput is reported as candidate·steps/s, where a *candidate* is one rollout row
   (one action sequence × one particle): rows × horizon / seconds.
   ``--rows-sweep 1 7 70 700 7000`` times the same contestants again at each of those
   batch sizes (``rows`` action sequences × 1 particle): a step loop pays a fixed cost per
   step that a parallel unroll pays once, so the ranking depends on the batch. The models are
   freshly initialized with the fitted ones' configs (timing depends on shapes, not
   weights) and their normalizers fitted on the dataset.

Writes ``OUT.json`` and ``OUT.md`` with ``--out OUT``: per dataset a table (rows =
models; columns = error at each horizon, fit seconds, fit epochs, rollout throughput),
the throughput table, and a "where each model wins and loses" list generated from the
numbers. With ``--pets RUN_ROOT`` the PETS runs of ``configs/sweeps/pets_models.yaml``
(``mbrl sweep pets_models``) are tabulated (``mbrl table``'s per-task table, plus the
mean wall time per run) into the same report; ``--from-json OUT.json`` re-renders an
earlier report (no refitting), e.g. to add the PETS table once the sweep has finished;
several (``--from-json A.json B.json``) become one report with every dataset section
(each with its own command, commit, date and machine) and the last PETS table;
``--pets EARLIER.json`` takes the PETS table of an earlier report.

The fits of each dataset are cached in ``--run-root`` (the ``mbrl model eval`` run dir
and ``fit-<name>.json``): a rerun with the same settings reuses them and only measures
throughput again.

Usage::

    .venv/bin/python benchmarks/bench_models.py \\
        --dataset /work/datasets/HalfCheetah-v4/halfcheetah-v4-medium.hdf5 \\
                  /work/datasets/Hopper-v4-s1/hopper-v4-medium.hdf5 \\
        --out results/model_comparison
    .venv/bin/python benchmarks/bench_models.py --from-json results/model_comparison.json \\
        --pets runs/sweeps/pets_models --out results/model_comparison
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console

from mbrl.bench import timeit
from mbrl.config import RunConfig, from_dict, to_dict
from mbrl.data.d4rl import D4RLDataset, trajectories
from mbrl.data.datasets import load_dataset
from mbrl.envs import EnvSpec, get_env_spec
from mbrl.errors import MbrlError
from mbrl.model_eval import (
    MODEL_KINDS,
    ModelEvalConfig,
    ModelEvalRun,
    load_model_eval_config,
    model_eval,
)
from mbrl.models.ensemble import ProbabilisticEnsemble
from mbrl.models.koopman import KoopmanModel
from mbrl.models.model_env import ModelEnv
from mbrl.models.transformer import TransformerModel
from mbrl.rundir import SUMMARY_FILE, RunDir, cpu_model, git_commit, script_command

HORIZONS = (1, 10, 25, 50)
REFERENCES = ("copy-obs", "linear")
KOOPMAN_METHODS = ("scan", "fft", "recurrent")
# the contestant whose throughput stands for each model in the main table
MAIN_ROLLOUT = {
    "ensemble": "ensemble step loop",
    "koopman": "koopman PETS objective (best parallel)",
    "transformer": "transformer predict_sequence_grouped",
}
# the Koopman model's multi-step prediction on the given rows (no particles shared)
KOOPMAN_SEQUENCE = "koopman predict_sequence (best parallel)"
# the code this benchmark measures: flagged when it differs from the commit
MEASURED_FILES = [
    "mbrl/model_eval.py",
    "mbrl/models/ensemble.py",
    "mbrl/models/koopman.py",
    "mbrl/models/transformer.py",
    "mbrl/models/model_env.py",
    "mbrl/models/trainer.py",
    "mbrl/models/seq_trainer.py",
    "benchmarks/bench_models.py",
]


# -- data ------------------------------------------------------------------------------
def subsample(ds: D4RLDataset, max_transitions: int | None, seed: int) -> D4RLDataset:
    """Whole trajectories of ``ds``, taken in a random order when they fit in
    ``max_transitions`` rows (the shortest ones if fewer than two fit), kept in file
    order; ``None``: ``ds`` itself.

    The last row of every kept trajectory is marked terminal or timeout so that two kept
    trajectories never merge.
    """
    if max_transitions is None or max_transitions >= len(ds):
        return ds
    eps = trajectories(ds)
    order = np.random.default_rng(seed).permutation(len(eps))
    lengths = [len(e.obs) for e in eps]
    kept: list[int] = []
    total = 0
    for i in order.tolist():
        if total + lengths[i] <= max_transitions:
            kept.append(i)
            total += lengths[i]
    if len(kept) < 2:  # too few fit: the shortest ones
        rest = sorted(set(range(len(eps))) - set(kept), key=lambda i: lengths[i])
        kept += rest[: 2 - len(kept)]
    kept.sort()
    rows = np.concatenate([np.arange(eps[i].start, eps[i].start + len(eps[i].obs)) for i in kept])
    ends = np.cumsum([len(eps[i].obs) for i in kept]) - 1
    terminals, timeouts = ds.terminals[rows].copy(), ds.timeouts[rows].copy()
    timeouts[ends] |= ~terminals[ends]
    nxt = None if ds.next_observations is None else ds.next_observations[rows]
    return dataclasses.replace(
        ds,
        observations=ds.observations[rows],
        actions=ds.actions[rows],
        rewards=ds.rewards[rows],
        terminals=terminals,
        timeouts=timeouts,
        next_observations=nxt,
        infos={},
    )


def nested(overrides: Sequence[str]) -> dict[str, Any]:
    """``["trainer.max_epochs=3", ...]`` -> ``{"trainer": {"max_epochs": 3}}`` (YAML values)."""
    out: dict[str, Any] = {}
    for text in overrides:
        if "=" not in text:
            raise MbrlError(f"--set '{text}': write FIELD=VALUE, e.g. trainer.max_epochs=20.")
        key, value = text.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def eval_config(args: argparse.Namespace) -> ModelEvalConfig:
    base = to_dict(ModelEvalConfig(models=tuple(args.models), horizons=tuple(args.horizons)))
    merged = _merge(base, nested(args.set))
    return from_dict(ModelEvalConfig, merged, source="--set")


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# -- 1 + 2: fits and open-loop errors (mbrl model eval) --------------------------------------
def unfinished_run(root: Path, name: str, cfg: ModelEvalRun) -> RunDir | None:
    """The newest ``mbrl model eval`` run dir of ``name`` under ``root`` that was stopped
    before its summary and has this exact config (its fits resume from their checkpoints)."""
    want = to_dict(cfg)
    for path in sorted(root.glob(f"*/model-eval/*-{name}"), reverse=True):
        run_dir = RunDir.open(path)
        if run_dir.summary_path.exists() or not run_dir.config_path.is_file():
            continue
        if to_dict(load_model_eval_config(run_dir)) == want:
            return run_dir
    return None


def fit_and_score(
    path: str,
    ev: ModelEvalConfig,
    args: argparse.Namespace,
    console: Console,
) -> tuple[dict[str, Any], D4RLDataset]:
    """Run (or reuse) ``mbrl model eval`` on one dataset; its numbers as a dict."""
    full = load_dataset(path)
    ds = subsample(full, args.max_transitions, args.seed)
    root = Path(args.run_root)
    key = {
        "dataset": str(Path(path).resolve()),
        "max_transitions": args.max_transitions,
        "seed": args.seed,
        "device": args.device,
        "threads": args.threads,
        "eval": to_dict(ev),
    }
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = f"{Path(path).stem}-{len(ds)}-{digest}"
    cache = root / f"fit-{name}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == json.loads(json.dumps(key, default=str)):
            console.print(f"{path}: reusing the fits of {cached['model_eval_run']}")
            return cached, ds
    data_path = Path(path)
    if len(ds) < len(full):
        from mbrl.data.d4rl import save_d4rl

        data_path = save_d4rl(ds, root / "data" / f"{name}.hdf5", overwrite=True)
    run = RunConfig(
        dataset=str(data_path),
        seed=args.seed,
        device=args.device,
        run_root=root,
        run_name=name,
        torch_threads=args.threads,
        progress=False,
        tensorboard=False,
        eval_every=0,
        checkpoint_every=0,
    )
    cfg = ModelEvalRun(eval=ev, run=run)
    unfinished = unfinished_run(root, name, cfg)
    if unfinished is not None:
        console.print(f"{path}: resuming the unfinished fits of {unfinished.path}")
    run_dir = model_eval(cfg, console=console, resume=unfinished)
    summary = json.loads((run_dir.path / SUMMARY_FILE).read_text())
    episodes = trajectories(ds)
    held = max(1, min(len(episodes) - 1, round(ev.heldout_fraction * len(episodes))))
    result: dict[str, Any] = {
        "key": key,
        "dataset": path,
        "env_id": full.env_id,
        "transitions": len(ds),
        "transitions_in_file": len(full),
        "trajectories": len(episodes),
        "heldout_trajectories": held,
        "model_eval_run": str(run_dir.path),
        "models": {},
    }
    for model, ol in summary["open_loop"].items():
        fit = summary["fit"].get(model, {})
        result["models"][model] = {
            "nmse": {int(h): v for h, v in ol["nmse"].items()},
            "mse": {int(h): v for h, v in ol["mse"].items()},
            "windows": {int(h): v for h, v in ol["windows"].items()},
            "fit_seconds": fit.get("fit_seconds"),
            "epochs": fit.get("epochs"),
            "stop_reason": fit.get("stop_reason"),
        }
    root.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return json.loads(json.dumps(result, default=str)), ds


def rollout_only_block(path: str, args: argparse.Namespace) -> tuple[dict[str, Any], D4RLDataset]:
    """``--rollout-only``: the dataset's block without fits (rollout timing depends on
    the shapes only; the dataset gives the dims, the normalizers and the start state)."""
    full = load_dataset(path)
    ds = subsample(full, args.max_transitions, args.seed)
    block: dict[str, Any] = {
        "dataset": path,
        "env_id": full.env_id,
        "transitions": len(ds),
        "transitions_in_file": len(full),
        "trajectories": len(trajectories(ds)),
        "heldout_trajectories": 0,
        "model_eval_run": None,
        "models": {},
    }
    return block, ds


# -- 3: rollout throughput ---------------------------------------------------------------
def rollout_contestants(
    ev: ModelEvalConfig,
    ds: D4RLDataset,
    spec: EnvSpec | None,
    candidates: int,
    particles: int,
    horizon: int,
    device: torch.device,
    seed: int = 0,
) -> dict[str, Callable[[], object]]:
    """Zero-argument calls, one per contestant (module docstring), on the same batch."""
    O, A = ds.obs_dim, ds.act_dim
    B = candidates * particles
    g = torch.Generator(device=device).manual_seed(seed)
    obs_t = torch.as_tensor(ds.observations, device=device)
    act_t = torch.as_tensor(ds.actions, device=device)
    rew_t = torch.as_tensor(ds.rewards, device=device)
    start = obs_t[:1]  # (1, O): every rollout starts where PETS would plan from
    plans = torch.rand(1, candidates, horizon, A, generator=g, device=device) * 2 - 1
    rows_act = plans[0, :, None].expand(candidates, particles, horizon, A).reshape(B, horizon, A)
    fns: dict[str, Callable[[], object]] = {}

    def objective(model: Any) -> Callable[[], object]:
        env = ModelEnv(model, spec, propagation="fixed_member", generator=g)
        return lambda: env.evaluate_action_sequences(plans, start, particles, g)

    torch.manual_seed(seed)
    if "ensemble" in ev.models:
        ens = ProbabilisticEnsemble(O, A, ev.ensemble).to(device)
        ens.fit_normalizer(obs_t, act_t)
        ens.eval()
        fns["ensemble step loop"] = objective(ens)
        E = ens.num_members
        counts = [B // E + (1 if e < B % E else 0) for e in range(E)]

        def forward_loop() -> None:
            obs = start.expand(B, O).contiguous()
            for t in range(horizon):
                mean, _ = ens.predict_grouped(obs, rows_act[:, t], counts)
                obs = obs + mean[:, :O]

        fns["ensemble forward loop"] = torch.no_grad()(forward_loop)
    if "koopman" in ev.models:
        koop = KoopmanModel(O, A, ev.koopman).to(device)
        koop.fit_normalizer(obs_t, act_t, rew_t)
        koop.eval()
        E = koop.num_members
        per = math.ceil(B / E)  # each member its share of the rows (E·per >= B)
        obs0 = start.expand(E, per, O).contiguous()
        pad = torch.arange(E * per, device=device) % B  # wraps round when B < E
        acts = rows_act[pad].view(E, per, horizon, A)
        for m in KOOPMAN_METHODS:
            fns[f"koopman predict_sequence ({m})"] = lambda m=m: koop.predict_sequence(  # type: ignore[misc]
                obs0, acts, method=m, with_reward=spec is None
            )
        fns["koopman PETS objective"] = objective(koop)
        for m in KOOPMAN_METHODS:  # the objective with each unroll of the horizon

            def objective_with(m: str = m) -> Callable[[], object]:
                run = objective(koop)

                def call() -> object:
                    koop.cfg.parallel, default = m, koop.cfg.parallel
                    try:
                        return run()
                    finally:
                        koop.cfg.parallel = default

                return call

            fns[f"koopman PETS objective ({m})"] = objective_with()
    if "transformer" in ev.models:
        tf = TransformerModel(O, A, ev.transformer).to(device)
        tf.fit_normalizer(obs_t, act_t, rew_t)
        tf.eval()
        E = tf.num_members
        counts_t = [B // E + (1 if e < B % E else 0) for e in range(E)]
        obs_b = start.expand(B, O).contiguous()
        fns["transformer predict_sequence_grouped"] = lambda: tf.predict_sequence_grouped(
            obs_b, rows_act, counts_t
        )
        fns["transformer PETS objective"] = objective(tf)
    return fns


def main_rollout(roll: dict[str, Any], model: str) -> dict[str, Any] | None:
    """The contestant that stands for ``model`` in the main table; reports made before
    the Koopman PETS-objective contestants existed stand Koopman's ``predict_sequence``."""
    r = roll.get(MAIN_ROLLOUT.get(model, ""))
    if r is None and model == "koopman":
        r = roll.get(KOOPMAN_SEQUENCE)
    return r


def bench_rollouts(
    fns: dict[str, Callable[[], object]],
    rows: int,
    horizon: int,
    repeats: int,
    min_time: float,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """Best of ``repeats`` interleaved rounds per contestant: seconds per call and
    candidate·steps/s (``rows × horizon / seconds``)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for f in fns.values():  # warm-up
            f()
        sync()
        best = dict.fromkeys(fns, math.inf)
        for _ in range(repeats):
            for k, f in fns.items():
                best[k] = min(best[k], timeit(f, min_time, sync))
    out: dict[str, dict[str, Any]] = {
        k: {"seconds": t, "steps_per_s": rows * horizon / t} for k, t in best.items()
    }
    for prefix, best_key in (
        ("koopman predict_sequence (", KOOPMAN_SEQUENCE),
        ("koopman PETS objective (", MAIN_ROLLOUT["koopman"]),
    ):
        parallel = [k for k in out if k.startswith(prefix) and "recurrent" not in k]
        if parallel:
            k = max(parallel, key=lambda k: out[k]["steps_per_s"])
            out[best_key] = {**out[k], "method": k.split("(")[1].rstrip(")")}
    return out


SWEEP_CONTESTANTS = (
    "ensemble step loop",
    "koopman predict_sequence (scan)",
    "koopman predict_sequence (fft)",
    "koopman predict_sequence (recurrent)",
    "transformer predict_sequence_grouped",
)


def rows_sweep(
    ev: ModelEvalConfig,
    ds: D4RLDataset,
    spec: EnvSpec | None,
    sizes: Sequence[int],
    horizon: int,
    repeats: int,
    min_time: float,
    device: torch.device,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The main rollouts (:data:`SWEEP_CONTESTANTS`) timed at each batch size in
    ``sizes`` (that many action sequences, 1 particle each)."""
    out = []
    for rows in sizes:
        fns = rollout_contestants(ev, ds, spec, rows, 1, horizon, device, seed)
        fns = {k: f for k, f in fns.items() if k in SWEEP_CONTESTANTS}
        out.append(
            {"rows": rows, "rollout": bench_rollouts(fns, rows, horizon, repeats, min_time, device)}
        )
    return out


def sweep_markdown(block: dict[str, Any]) -> list[str]:
    """The batch-size sweep as a table: seconds per call and the ratio to the ensemble."""
    sweep = block.get("rollout_sweep")
    if not sweep:
        return []
    H = block["rollout_setup"]["horizon"]
    lines = [
        f"Rollout time by batch size ({H} steps, `rows` action sequences × 1 particle, same "
        "contestants; ms per call, and in brackets the speed relative to the ensemble step "
        "loop, > 1 = faster):",
        "",
        "| rows | ensemble step loop | Koopman parallel (best of scan/FFT) | Koopman recurrent | "
        "transformer (KV cache) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for entry in sweep:
        roll = entry["rollout"]
        base = roll.get("ensemble step loop", {}).get("seconds")

        def cell(key: str, roll: dict[str, Any] = roll, base: float | None = base) -> str:
            r = roll.get(key)
            if r is None:
                return "–"
            ratio = f" ({base / r['seconds']:.2f}×)" if base else ""
            meth = f" {r['method']}" if "method" in r else ""
            return f"{r['seconds'] * 1e3:.1f}{meth}{ratio}"

        lines.append(
            f"| {entry['rows']:,} | {cell('ensemble step loop')} | "
            f"{cell(KOOPMAN_SEQUENCE)} | {cell('koopman predict_sequence (recurrent)')} | "
            f"{cell(MAIN_ROLLOUT['transformer'])} |"
        )
    return [*lines, ""]


def sweep_verdict(block: dict[str, Any]) -> str | None:
    """One line: the batch sizes at which Koopman's parallel prediction beats the
    ensemble step loop, and those at which it does not."""
    sweep = block.get("rollout_sweep")
    if not sweep:
        return None
    faster: list[str] = []
    slower: list[str] = []
    for entry in sweep:
        roll = entry["rollout"]
        k, e = roll.get(KOOPMAN_SEQUENCE), roll.get("ensemble step loop")
        if k and e:
            (faster if k["seconds"] < e["seconds"] else slower).append(
                f"{entry['rows']:,} ({e['seconds'] / k['seconds']:.2f}×)"
            )
    return (
        "- Batch-size sweep — Koopman's parallel prediction is faster than the ensemble "
        f"step loop at rows {', '.join(faster) or 'none'}; not at {', '.join(slower) or 'none'}."
    )


# -- wins and losses, generated from the numbers -------------------------------------------
def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _rate(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def metrics_of(block: dict[str, Any]) -> dict[str, dict[str, tuple[float, bool]]]:
    """metric label -> model -> (value, higher_is_better), learned models only."""
    out: dict[str, dict[str, tuple[float, bool]]] = {}
    models = [m for m in MODEL_KINDS if m in block["models"]]
    for h in block["horizons"]:
        vals = {m: block["models"][m]["nmse"].get(h) for m in models}
        out[f"open-loop error at h={h}"] = {
            m: (v, False) for m, v in vals.items() if v is not None and math.isfinite(v)
        }
    out["fit time"] = {
        m: (float(block["models"][m]["fit_seconds"]), False)
        for m in models
        if block["models"][m].get("fit_seconds") is not None
    }
    roll = block.get("rollout", {})
    out["rollout throughput"] = {
        m: (r["steps_per_s"], True) for m in models if (r := main_rollout(roll, m)) is not None
    }
    return out


def wins_and_losses(block: dict[str, Any]) -> list[str]:
    """Bullet lines: per metric the best model (and by how much), per model where it wins
    and loses, the learned models that do worse than a reference row, and the issue's
    Koopman-vs-ensemble rollout check."""
    lines: list[str] = []
    per_model: dict[str, dict[str, list[str]]] = {}
    for metric, vals in metrics_of(block).items():
        if len(vals) < 2:
            continue
        higher = next(iter(vals.values()))[1]
        ranked = sorted(vals, key=lambda m: vals[m][0], reverse=higher)
        best, second, worst = ranked[0], ranked[1], ranked[-1]
        b, s = vals[best][0], vals[second][0]
        factor = (b / s if higher else s / b) if b > 0 and s > 0 else math.nan
        per_model.setdefault(best, {"wins": [], "loses": []})["wins"].append(
            f"{metric} ({_fmt(factor)}× better than {second})"
        )
        w, s2 = vals[worst][0], vals[ranked[-2]][0]
        factor = (s2 / w if higher else w / s2) if w > 0 and s2 > 0 else math.nan
        per_model.setdefault(worst, {"wins": [], "loses": []})["loses"].append(
            f"{metric} ({_fmt(factor)}× worse than {ranked[-2]})"
        )
    for m in MODEL_KINDS:
        if m in per_model:
            wl = per_model[m]
            lines.append(
                f"- **{m}** wins: {'; '.join(wl['wins']) or 'nothing'} — "
                f"loses: {'; '.join(wl['loses']) or 'nothing'}."
            )
    for ref in REFERENCES:
        if ref not in block["models"]:
            continue
        worse = []
        for m in MODEL_KINDS:
            if m not in block["models"]:
                continue
            hs = [
                h
                for h in block["horizons"]
                if (v := block["models"][m]["nmse"].get(h)) is not None
                and (r := block["models"][ref]["nmse"].get(h)) is not None
                and math.isfinite(r)
                and not v < r
            ]
            if hs:
                worse.append(f"{m} at h={', '.join(map(str, hs))}")
        if worse:
            lines.append(f"- No better than the `{ref}` reference: {'; '.join(worse)}.")
    roll = block.get("rollout", {})
    e = roll.get(MAIN_ROLLOUT["ensemble"])
    objective = roll.get(MAIN_ROLLOUT["koopman"])  # absent from reports before it existed
    seq = roll.get(KOOPMAN_SEQUENCE)
    rs = block["rollout_setup"]
    checks = (
        (
            objective,
            f"Issue check — PETS' objective ({rs['candidates']} sequences × "
            f"{rs['particles']} particles, {rs['horizon']} steps) by the Koopman model's "
            "parallel multi-step prediction (`{method}`) vs the ensemble rolled step by step",
        ),
        (
            seq,
            "Koopman's parallel multi-step prediction (`{method}`) on "
            f"{rs['candidates'] * rs['particles']:,} distinct rows (no particles shared) vs "
            f"the ensemble rolled step by step over {rs['horizon']} steps",
        ),
    )
    for k, text in checks:
        if e and k:
            ratio = k["steps_per_s"] / e["steps_per_s"]
            verdict = "faster ✓" if ratio > 1 else "NOT faster ✗"
            lines.append(f"- {text.format(method=k.get('method'))}: {ratio:.2f}× ({verdict}).")
    if e:
        rec = roll.get("koopman predict_sequence (recurrent)")
        if rec:
            lines.append(
                f"- Koopman's step-by-step recurrence (`recurrent`): "
                f"{rec['steps_per_s'] / e['steps_per_s']:.2f}× the ensemble step loop."
            )
    sweep_line = sweep_verdict(block)
    if sweep_line:
        lines.append(sweep_line)
    return lines


# -- report ----------------------------------------------------------------------------------
def dataset_markdown(block: dict[str, Any]) -> list[str]:
    hs = block["horizons"]
    if not block["models"]:  # --rollout-only
        lines = [
            f"## {Path(block['dataset']).name} ({block['env_id']}): rollout timing only",
            "",
            "No fits (`--rollout-only`): untrained models of the configured sizes, "
            f"normalizers fitted on {block['transitions']:,} transitions of the file.",
            "",
            *([*provenance_lines(block["meta"]), ""] if "meta" in block else []),
        ]
        return [*lines, *rollout_markdown(block)]
    lines = [
        f"## {Path(block['dataset']).name} ({block['env_id']})",
        "",
        f"{block['transitions']:,} transitions ({block['trajectories']} trajectories"
        + (
            f", drawn from the file's {block['transitions_in_file']:,}"
            if block["transitions"] < block["transitions_in_file"]
            else ""
        )
        + f"); {block['heldout_trajectories']} trajectories held out for scoring. "
        f"Fits: `{block['model_eval_run']}`.",
        "",
        *([*provenance_lines(block["meta"]), ""] if "meta" in block else []),
        "| model | "
        + " | ".join(f"nMSE h={h}" for h in hs)
        + " | fit s | fit epochs | rollout candidate·steps/s |",
        "|---|" + "---:|" * (len(hs) + 3),
    ]
    for m in [*MODEL_KINDS, *REFERENCES]:
        r = block["models"].get(m)
        if r is None:
            continue
        roll = main_rollout(block.get("rollout", {}), m) or {}
        epochs = f"{r['epochs']} ({r['stop_reason']})" if r.get("epochs") is not None else "–"
        lines.append(
            f"| {m} | "
            + " | ".join(_fmt(r["nmse"].get(h)) for h in hs)
            + f" | {_fmt(r.get('fit_seconds'))} | {epochs} | {_rate(roll.get('steps_per_s'))} |"
        )
    return [*lines, "", *rollout_markdown(block)]


def rollout_markdown(block: dict[str, Any]) -> list[str]:
    rs = block["rollout_setup"]
    lines = [
        f"Rollout throughput: {rs['candidates']} action sequences × {rs['particles']} "
        f"particles = {rs['candidates'] * rs['particles']:,} rows over {rs['horizon']} steps "
        "(candidate·steps/s = rows × steps / s), best of "
        f"{rs['repeats']} interleaved rounds of ≥{rs['min_time']} s:",
        "",
        "| rollout | s per call | candidate·steps/s | × ensemble step loop |",
        "|---|---:|---:|---:|",
    ]
    roll = block.get("rollout", {})
    base = roll.get(MAIN_ROLLOUT["ensemble"], {}).get("steps_per_s")
    for k, r in roll.items():
        if k in (MAIN_ROLLOUT["koopman"], KOOPMAN_SEQUENCE):
            continue
        ratio = f"{r['steps_per_s'] / base:.2f}×" if base else "–"
        lines.append(f"| {k} | {r['seconds']:.3f} | {_rate(r['steps_per_s'])} | {ratio} |")
    lines.append("")
    lines += sweep_markdown(block)
    lines += ["### Where each model wins and loses (generated from the numbers above)", ""]
    lines += wins_and_losses(block) or ["- (too few models to compare)"]
    lines.append("")
    return lines


def pets_markdown(pets: dict[str, Any]) -> list[str]:
    lines = [
        "## PETS with each model (`configs/sweeps/pets_models.yaml`)",
        "",
        f"Runs under `{'`, `'.join(pets['paths'])}`; final evaluation return (mean ± std over "
        "seeds), via `mbrl table`'s per-task table, and the mean wall time of a run.",
        "",
        pets["table"],
        "",
    ]
    if pets.get("skipped"):
        lines += [f"Unfinished runs left out: {len(pets['skipped'])}.", ""]
    return lines


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several reports as one: their dataset sections in order, each keeping its own
    report's provenance (``meta``) when there is more than one; the PETS section of the
    last report that has one."""
    res: dict[str, Any] = {
        "meta": reports[0]["meta"],
        "eval_config": reports[0]["eval_config"],
        "datasets": [],
    }
    for rep in reports:
        for block in rep["datasets"]:
            if len(reports) > 1:
                block.setdefault("meta", rep["meta"])
            res["datasets"].append(block)
        if rep.get("pets"):
            res["pets"] = rep["pets"]
    return res


def provenance_lines(meta: dict[str, Any]) -> list[str]:
    return [
        f"- command: `{meta['command']}`",
        f"- git commit: `{meta['commit']}`; date: {meta['date']}",
        f"- machine: {meta['machine']}; torch {meta['torch']}; device {meta['device']}; "
        f"{meta['threads']} torch thread(s)",
        f"- load average before/after: {meta['load_before']} / {meta['load_after']}",
    ]


def markdown(res: dict[str, Any]) -> str:
    merged = any("meta" in block for block in res["datasets"])
    lines = [
        "# Dynamics models: ensemble vs Koopman vs transformer",
        "",
        *(
            ["- one report per dataset, merged: command, commit, date and machine under each"]
            if merged
            else provenance_lines(res["meta"])
        ),
        "- nMSE: open-loop error of the observation predicted h steps ahead from the recorded "
        "actions on held-out trajectories, per-dimension MSE / data variance, averaged over "
        "dimensions (1.0 = as bad as predicting the mean); each sequence model carries its own "
        "state (Koopman latent, transformer KV-cached context of its predictions). "
        "`copy-obs` and `linear` are references.",
        "- fit s / epochs: one `mbrl model eval` fit, early stopping on a holdout share of the "
        "training trajectories (the stop reason in brackets).",
        "- rollout: the model's own multi-step rollout; ensemble = PETS' `ModelEnv` step loop, "
        "Koopman = PETS' objective through the faster of its parallel unrolls (scan/FFT; "
        "in reports made before that contestant existed, `predict_sequence` on the distinct "
        "rows), "
        "transformer = KV-cached `predict_sequence_grouped`; untrained models of the same "
        "sizes (timing depends on shapes only).",
        "",
    ]
    for block in res["datasets"]:
        lines += dataset_markdown(block)
    if res.get("pets"):
        lines += pets_markdown(res["pets"])
    return "\n".join(lines)


def pets_table(paths: Sequence[str], budgets: Sequence[int]) -> dict[str, Any]:
    """``mbrl table``'s per-task table of the PETS sweep runs, plus mean wall time."""
    from mbrl.results.runs import load_runs
    from mbrl.results.table import build_table, display_frames, markdown_table

    ps = [Path(p) for p in paths]
    t = build_table(ps, budgets=budgets, reps=1000)
    per, _ = display_frames(t)
    runs, _ = load_runs(ps, finished_only=True)
    walls: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        w = (r.summary or {}).get("wall_time_s")
        if w is not None:
            walls.setdefault((r.task, r.algorithm), []).append(float(w))
    per["wall s / run"] = [
        _fmt(float(np.mean(walls[(task, alg)]))) if (task, alg) in walls else "–"
        for task, alg in zip(per["task"], per["algorithm"], strict=True)
    ]
    return {
        "paths": [str(p) for p in paths],
        "table": markdown_table(per),
        "rows": per.to_dict(orient="records"),
        "skipped": [str(p) for p in t.skipped],
    }


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--dataset", nargs="+", default=[], help="D4RL-format files")
    p.add_argument("--max-transitions", type=int, default=None, help="whole trajectories")
    p.add_argument("--models", nargs="+", default=list(MODEL_KINDS), choices=MODEL_KINDS)
    p.add_argument("--horizons", nargs="+", type=int, default=list(HORIZONS))
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="ModelEvalConfig fields, e.g. trainer.max_epochs=20")  # fmt: skip
    p.add_argument("--candidates", type=int, default=400)
    p.add_argument("--particles", type=int, default=20)
    p.add_argument("--rollout-horizon", type=int, default=50)
    p.add_argument("--rows-sweep", nargs="*", type=int, default=[],
                   help="also time rollouts at these batch sizes (rows, 1 particle)")  # fmt: skip
    p.add_argument("--rollout-only", action="store_true",
                   help="time the rollouts only: no fits, no open-loop errors")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-root", default="runs/bench_models", help="fits and their cache")
    p.add_argument("--pets", nargs="*", default=[],
                   help="PETS sweep run roots, or an earlier OUT.json (its table)")  # fmt: skip
    p.add_argument("--pets-budgets", nargs="*", type=int, default=[])
    p.add_argument("--from-json", nargs="+", default=[],
                   help="re-render earlier OUT.json reports (several: one report)")  # fmt: skip
    p.add_argument("--machine", default=None, help="machine description for the report")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    if not args.dataset and not args.from_json:
        p.error("give --dataset FILE ... or --from-json OUT.json ...")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    console = Console(stderr=True)
    if args.from_json:
        res: dict[str, Any] = merge_reports(
            [json.loads(Path(f).read_text()) for f in args.from_json]
        )
        for block in res["datasets"]:
            for r in block["models"].values():
                r["nmse"] = {int(h): v for h, v in r["nmse"].items()}
    else:
        if device.type == "cuda":
            machine = args.machine or torch.cuda.get_device_name()
        else:
            machine = args.machine or f"{os.cpu_count()}-core CPU ({cpu_model()}), no GPU"
        meta: dict[str, Any] = {
            "command": script_command(__file__, argv),
            "commit": git_commit(MEASURED_FILES) or "unknown",
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine,
            "torch": torch.__version__,
            "device": args.device,
            "threads": args.threads,
            "load_before": loadavg(),
        }
        ev = eval_config(args)
        res = {"meta": meta, "eval_config": to_dict(ev), "datasets": []}
        for path in args.dataset:
            if args.rollout_only:
                block, ds = rollout_only_block(path, args)
            else:
                block, ds = fit_and_score(path, ev, args, console)
            block["horizons"] = list(ev.horizons)
            for r in block["models"].values():
                r["nmse"] = {int(h): v for h, v in r["nmse"].items()}
            env_id = block.get("env_id")
            spec = get_env_spec(env_id) if env_id else None
            if spec is not None and spec.reward_fn is None:
                spec = None
            fns = rollout_contestants(
                ev, ds, spec, args.candidates, args.particles, args.rollout_horizon, device,
                args.seed,
            )  # fmt: skip
            rows = args.candidates * args.particles
            block["rollout"] = bench_rollouts(
                fns, rows, args.rollout_horizon, args.repeats, args.min_time, device
            )
            block["rollout_setup"] = {
                "candidates": args.candidates,
                "particles": args.particles,
                "horizon": args.rollout_horizon,
                "repeats": args.repeats,
                "min_time": args.min_time,
                "reward_and_termination": env_id if spec is not None else None,
            }
            if args.rows_sweep:
                block["rollout_sweep"] = rows_sweep(
                    ev, ds, spec, args.rows_sweep, args.rollout_horizon, args.repeats,
                    args.min_time, device, args.seed,
                )  # fmt: skip
            console.print(json.dumps({"dataset": path, "rollout": block["rollout"]}))
            res["datasets"].append(block)
        meta["load_after"] = loadavg()
    if len(args.pets) == 1 and args.pets[0].endswith(".json"):  # an earlier report's table
        pets = json.loads(Path(args.pets[0]).read_text()).get("pets")
        if not pets:
            p.error(f"--pets {args.pets[0]}: that report has no PETS section")
        res["pets"] = pets
    elif args.pets:
        res["pets"] = pets_table(args.pets, args.pets_budgets)
    text = markdown(res)
    print(json.dumps(res, indent=1, default=str))
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        out.with_suffix(".md").write_text(text + "\n")
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
