"""``mbrl sweep``: run a grid of agents x tasks x seeds (x overrides), resumably.

A sweep is a YAML file (see ``configs/sweeps/``) and/or command-line flags::

    name: point-mass              # names the runs (run.run_name) and the sweep's folder
    run_root: runs/sweeps/point-mass
    agents:                       # "sac", "pets:point_mass" (agent:preset) or a mapping
      - pets:point_mass
      - {agent: sac, preset: null, label: small, overrides: {agent.batch_size: 64}}
    envs: [PointMass1D-v0]        # and/or datasets: [d4rl:hopper-medium-v2]
    seeds: [0, 1, 2]
    overrides: {run.total_steps: 300}        # every run (dotted keys or nested)
    grid: {agent.learning_rate: [3e-4, 1e-3]} # cartesian product of values
    resources: {torch_threads: 1, num_cpus: 1, num_gpus: 0, workers: 2}

Every cell of the grid is one ``mbrl train`` in its own process (``python -c`` of the
CLI), with its resolved overrides passed as a ``--config`` file and the agent's preset
as ``--preset``. Its run directory is ``<run_root>/<task>/<agent>/<seed>-<timestamp>-
<name>-<hash>``, where the hash covers everything but the seed (agent, preset, task,
overrides), so re-running the sweep finds it again: a run with ``summary.json`` is
skipped, an unfinished one continues with ``mbrl train --resume`` from its latest
checkpoint, a missing one starts. Output of each run goes to
``<run_root>/.sweep/logs/``; a run that crashes is reported with the end of its log
and does not stop the others (the command then exits 1).

Backends: ``local`` — a pool of ``workers`` concurrent processes on this machine, each
with ``torch_threads`` threads (``OMP_NUM_THREADS`` too), by default
``cpu_count // torch_threads`` of them. ``ray`` — every run is a Ray task declaring
``num_cpus``/``num_gpus``, on the cluster at ``--address`` or on a local Ray started for
the sweep; the run root must then be on a filesystem that every node sees.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
import yaml

from mbrl.config import deep_merge, write_atomic
from mbrl.errors import MbrlError
from mbrl.rundir import CONFIG_FILE, SUMMARY_FILE, _safe

SWEEP_DIR = ".sweep"
SPEC_KEYS = {"name", "run_root", "agents", "envs", "datasets", "seeds", "overrides", "grid"}
SPEC_KEYS |= {"resources"}
RESOURCE_KEYS = {"torch_threads", "num_cpus", "num_gpus", "workers"}
AGENT_KEYS = {"agent", "preset", "label", "overrides"}
# Set by the sweep itself for every cell; a sweep file must not override them.
RESERVED = {"run.seed", "run.run_root", "run.run_name", "run.env", "run.dataset"}


@dataclass
class SweepOptions:
    """Options of ``mbrl sweep`` (flags override the sweep file).

    Attributes:
        file: sweep YAML (configs/sweeps/*.yaml); optional when --agents etc. are given.
        agents: agents to run, ``NAME`` or ``NAME:PRESET``; replaces the file's list.
        envs: environments; replaces the file's list.
        datasets: offline datasets; replaces the file's list.
        seeds: seeds; replaces the file's list.
        override: ``KEY=VALUE`` for every run, e.g. ``run.total_steps=1000`` (YAML value).
        name: the sweep's name, part of every run directory's name.
        run_root: where the runs go (default runs/sweeps/NAME).
        backend: ``local`` process pool or ``ray``.
        workers: concurrent runs (local; default CPUs // torch_threads).
        torch_threads: torch/OpenMP threads of each run.
        address: Ray cluster address (``auto``: the running one); none starts a local Ray.
        num_cpus: CPUs a Ray task declares (default torch_threads).
        num_gpus: GPUs a Ray task declares (a fraction shares one).
        dry_run: list the cells and what would happen, run nothing.
    """

    file: Annotated[Path | None, tyro.conf.Positional] = None
    agents: tuple[str, ...] = ()
    envs: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    override: tuple[str, ...] = ()
    name: str | None = None
    run_root: Path | None = None
    backend: Literal["local", "ray"] = "local"
    workers: int | None = None
    torch_threads: int | None = None
    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class Cell:
    """One run of the grid (picklable: it travels to Ray workers)."""

    agent: str
    preset: str | None
    task: str
    offline: bool
    seed: int
    config: dict[str, Any] = field(hash=False)  # {"agent": {...}, "run": {...}} for --config
    run_root: str
    run_name: str
    torch_threads: int
    label: str  # for the progress display and the report

    @property
    def run_parent(self) -> Path:
        return Path(self.run_root) / _safe(self.task) / _safe(self.agent)

    @property
    def config_path(self) -> Path:
        return Path(self.run_root) / SWEEP_DIR / f"{self.run_name}-s{self.seed}.yaml"

    @property
    def log_path(self) -> Path:
        return Path(self.run_root) / SWEEP_DIR / "logs" / f"{self.run_name}-s{self.seed}.log"


@dataclass
class CellResult:
    label: str
    status: Literal["skipped", "finished", "resumed", "failed"]
    run_dir: str | None
    seconds: float = 0.0
    error: str | None = None
    log: str | None = None


@dataclass
class Sweep:
    name: str
    run_root: Path
    cells: list[Cell]
    workers: int
    torch_threads: int
    num_cpus: float
    num_gpus: float


# -- spec -> cells -----------------------------------------------------------------
def _nest(overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """``{"agent.batch_size": 64, "run": {"eval_every": 10}}`` -> nested agent/run dicts."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        if parts[0] not in {"agent", "run"}:
            raise MbrlError(
                f"{source}: override '{key}' must start with 'agent.' or 'run.' "
                "(e.g. agent.batch_size, run.total_steps)."
            )
        if len(parts) == 1:
            if not isinstance(value, dict):
                raise MbrlError(f"{source}: '{key}' must be a mapping of fields.")
            out = deep_merge(out, {key: value})
            continue
        node: dict[str, Any] = {}
        leaf = node
        for p in parts[:-1]:
            leaf[p] = {}
            leaf = leaf[p]
        leaf[parts[-1]] = value
        out = deep_merge(out, node)
    return out


def _dotted(nested: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in nested.items():
        keys |= _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return keys


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise MbrlError(f"--override '{text}': write KEY=VALUE, e.g. run.total_steps=1000.")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _agent_entries(raw: Any, source: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise MbrlError(
            f"{source}: 'agents' must be a non-empty list, e.g. [sac, pets:point_mass]."
        )
    entries: list[dict[str, Any]] = []
    for item in raw:
        if isinstance(item, str):
            agent, _, preset = item.partition(":")
            entries.append({"agent": agent, "preset": preset or None, "label": "", "overrides": {}})
        elif isinstance(item, dict):
            unknown = sorted(set(item) - AGENT_KEYS)
            if unknown or "agent" not in item:
                raise MbrlError(
                    f"{source}: an agent entry needs 'agent' and may have "
                    f"{', '.join(sorted(AGENT_KEYS - {'agent'}))}; got {item}."
                )
            entries.append(
                {
                    "agent": str(item["agent"]),
                    "preset": item.get("preset"),
                    "label": str(item.get("label") or ""),
                    "overrides": item.get("overrides") or {},
                }
            )
        else:
            raise MbrlError(f"{source}: agent entry {item!r} must be a name or a mapping.")
    return entries


def load_spec(opts: SweepOptions) -> dict[str, Any]:
    """The sweep file (if any) with the command-line flags applied on top."""
    spec: dict[str, Any] = {}
    if opts.file is not None:
        path = Path(opts.file)
        if not path.is_file() and not path.suffix:
            from mbrl.config import list_presets, preset_dir

            if str(path) in list_presets("sweeps"):  # a sweep shipped in configs/sweeps/
                path = preset_dir("sweeps") / f"{path}.yaml"
        if not path.is_file():
            from mbrl.config import list_presets

            shipped = ", ".join(list_presets("sweeps")) or "none"
            raise MbrlError(
                f"sweep file '{path}' not found; pass a YAML file or a shipped sweep ({shipped})."
            )
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MbrlError(f"{path}: invalid YAML ({exc}).") from None
        if not isinstance(spec, dict):
            raise MbrlError(f"{path}: a sweep file is a mapping (name, agents, envs, seeds, ...).")
        unknown = sorted(set(spec) - SPEC_KEYS)
        if unknown:
            from mbrl.errors import did_you_mean

            raise MbrlError(
                f"{path}: unknown key(s) {', '.join(unknown)}.{did_you_mean(unknown[0], SPEC_KEYS)}"
                f" Known keys: {', '.join(sorted(SPEC_KEYS))}."
            )
        spec.setdefault("name", path.stem)
    if opts.agents:
        spec["agents"] = list(opts.agents)
    if opts.envs or opts.datasets:
        spec["envs"], spec["datasets"] = list(opts.envs), list(opts.datasets)
    if opts.seeds:
        spec["seeds"] = list(opts.seeds)
    if opts.override:
        spec["overrides"] = {
            **(spec.get("overrides") or {}),
            **dict(map(_parse_override, opts.override)),
        }
    if opts.name:
        spec["name"] = opts.name
    if opts.run_root:
        spec["run_root"] = str(opts.run_root)
    res = dict(spec.get("resources") or {})
    unknown = sorted(set(res) - RESOURCE_KEYS)
    if unknown:
        known = ", ".join(sorted(RESOURCE_KEYS))
        raise MbrlError(f"resources: unknown key(s) {', '.join(unknown)}; use {known}.")
    for key in RESOURCE_KEYS:
        if getattr(opts, key) is not None:
            res[key] = getattr(opts, key)
    spec["resources"] = res
    return spec


def _cell_hash(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def build_sweep(spec: dict[str, Any]) -> Sweep:
    """Expand a sweep spec into its cells (agents x tasks x grid x seeds)."""
    source = "sweep"
    if "agents" not in spec:
        raise MbrlError("a sweep needs agents: 'agents:' in the file or --agents NAME ...")
    entries = _agent_entries(spec["agents"], source)
    envs, datasets = list(spec.get("envs") or []), list(spec.get("datasets") or [])
    if not envs and not datasets:
        raise MbrlError(
            "a sweep needs tasks: 'envs:'/'datasets:' in the file or --envs/--datasets."
        )
    seeds = spec.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and s >= 0 for s in seeds)
    ):
        raise MbrlError(
            f"{source}: 'seeds' must be a list of non-negative integers, got {seeds!r}."
        )
    if len(set(seeds)) != len(seeds):
        raise MbrlError(f"{source}: seeds {seeds} repeat a seed.")
    name = _safe(str(spec.get("name") or "sweep"))
    run_root = Path(spec.get("run_root") or Path("runs") / "sweeps" / name).absolute()
    res = spec["resources"]
    threads = int(res.get("torch_threads", 1))
    if threads < 1:
        raise MbrlError(f"torch_threads={threads} must be >= 1.")
    workers = int(res.get("workers") or max(1, (os.cpu_count() or 1) // threads))
    if workers < 1:
        raise MbrlError(f"workers={workers} must be >= 1.")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise MbrlError(f"{source}: 'grid' maps keys to non-empty lists of values, got {grid!r}.")
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    base = _nest(spec.get("overrides") or {}, f"{source} overrides")
    from mbrl.registry import AGENTS

    cells: list[Cell] = []
    tasks = [(t, False) for t in envs] + [(d, True) for d in datasets]
    for entry in entries:
        AGENTS.get(entry["agent"])  # unknown agent: fail now with a suggestion
        for (task, offline), combo in itertools.product(tasks, combos):
            preset = entry["preset"]
            if isinstance(preset, dict):
                if task not in preset:
                    raise MbrlError(
                        f"{source}: agent {entry['agent']} maps presets for "
                        f"{', '.join(preset)} but not for task '{task}'."
                    )
                preset = preset[task]
            overrides = deep_merge(
                deep_merge(base, _nest(entry["overrides"], f"{entry['agent']} overrides")),
                _nest(combo, f"{source} grid"),
            )
            reserved = sorted(_dotted(overrides) & RESERVED)
            if reserved:
                raise MbrlError(
                    f"{source}: {', '.join(reserved)} are set by the sweep itself (seeds, "
                    "envs/datasets, run_root, name); remove them from the overrides."
                )
            digest = _cell_hash(
                {"agent": entry["agent"], "preset": preset, "task": task, "overrides": overrides}
            )
            run_name = f"{name}-{digest}"
            label = entry["label"] or entry["agent"] + (f":{preset}" if preset else "")
            if combo:
                label += (
                    " [" + ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in combo.items()) + "]"
                )
            for seed in seeds:
                run = {
                    **overrides.get("run", {}),
                    ("dataset" if offline else "env"): task,
                    "seed": seed,
                    "run_root": str(run_root),
                    "run_name": run_name,
                    "progress": False,
                    "torch_threads": threads,
                }
                cells.append(
                    Cell(
                        agent=entry["agent"],
                        preset=preset,
                        task=task,
                        offline=offline,
                        seed=seed,
                        config={"agent": overrides.get("agent", {}), "run": run},
                        run_root=str(run_root),
                        run_name=run_name,
                        torch_threads=threads,
                        label=f"{label} {task} seed {seed}",
                    )
                )
    return Sweep(
        name=name,
        run_root=run_root,
        cells=cells,
        workers=workers,
        torch_threads=threads,
        num_cpus=float(res.get("num_cpus") or threads),
        num_gpus=float(res.get("num_gpus") or 0.0),
    )


# -- one cell ----------------------------------------------------------------------
def find_existing(cell: Cell) -> tuple[Path | None, Path | None]:
    """``(finished, unfinished)`` run directories of ``cell`` from earlier sweeps."""
    pattern = re.compile(
        rf"^{cell.seed}-\d{{8}}-\d{{6}}-{re.escape(_safe(cell.run_name))}(\.\d+)?$"
    )
    if not cell.run_parent.is_dir():
        return None, None
    matches = sorted(
        (
            p
            for p in cell.run_parent.iterdir()
            if pattern.match(p.name) and (p / CONFIG_FILE).is_file()
        ),
        key=lambda p: p.stat().st_mtime,
    )
    finished = [p for p in matches if (p / SUMMARY_FILE).is_file()]
    unfinished = [p for p in matches if not (p / SUMMARY_FILE).is_file()]
    return (finished[-1] if finished else None), (unfinished[-1] if unfinished else None)


def plan(cell: Cell) -> str:
    """What running ``cell`` now would do: ``skip``, ``resume`` or ``start``."""
    finished, unfinished = find_existing(cell)
    return "skip" if finished else "resume" if unfinished else "start"


def _cli_command(args: list[str]) -> list[str]:
    # The CLI of this very interpreter (works for Ray workers too, whatever their venv).
    return [sys.executable, "-c", "import sys; from mbrl.cli import main; sys.exit(main())", *args]


def _error_from_log(log: Path, code: int) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    if code < 0:
        return f"killed by signal {-code}"
    for line in reversed(lines):
        if line.startswith("error:") or re.match(r"^\w*(Error|Exception)\b", line):
            return line
    return lines[-1] if lines else f"exit status {code}"


def run_cell(cell: Cell) -> CellResult:
    """Run (or skip, or resume) one cell in a subprocess; never raises for a failed run."""
    start = time.perf_counter()
    finished, unfinished = find_existing(cell)
    if finished is not None:
        return CellResult(cell.label, "skipped", str(finished))
    if unfinished is not None:
        args = ["train", "--resume", str(unfinished)]
    else:
        write_atomic(cell.config_path, yaml.safe_dump(cell.config, sort_keys=False))
        args = ["train", cell.agent, "--config", str(cell.config_path)]
        if cell.preset:
            args[2:2] = ["--preset", cell.preset]
    cmd = _cli_command(args)
    env = os.environ | {
        "OMP_NUM_THREADS": str(cell.torch_threads),
        "MKL_NUM_THREADS": str(cell.torch_threads),
        "PYTHONUNBUFFERED": "1",
    }
    cell.log_path.parent.mkdir(parents=True, exist_ok=True)
    with cell.log_path.open("a") as log:
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        log.write(f"\n=== {stamp} mbrl {' '.join(args)}\n")
        log.flush()
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - start
    done, partial = find_existing(cell)
    if code != 0 or done is None:
        return CellResult(
            cell.label,
            "failed",
            str(partial) if partial else None,
            seconds,
            _error_from_log(cell.log_path, code) if code else "finished without summary.json",
            str(cell.log_path),
        )
    status: Literal["finished", "resumed"] = "resumed" if unfinished is not None else "finished"
    return CellResult(cell.label, status, str(done), seconds, log=str(cell.log_path))


# -- backends ----------------------------------------------------------------------
OnResult = Callable[[CellResult], None]


def run_local(cells: list[Cell], workers: int, on_result: OnResult) -> None:
    """A pool of ``workers`` threads, each waiting on one training subprocess at a time."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(run_cell, c): c for c in cells}
        for fut in as_completed(futures):
            cell = futures[fut]
            try:
                on_result(fut.result())
            except Exception as exc:  # e.g. the log folder is not writable
                on_result(CellResult(cell.label, "failed", None, error=repr(exc)))
    except KeyboardInterrupt:
        # Ctrl-C reaches the running trainings too (same process group); start no more
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def run_ray(
    cells: list[Cell],
    on_result: OnResult,
    address: str | None,
    num_cpus: float,
    num_gpus: float,
    local_cpus: int | None = None,
) -> None:
    """Each cell a Ray task declaring ``num_cpus``/``num_gpus``. Connects to ``address``
    or starts a local Ray (with ``local_cpus`` CPUs) and shuts it down afterwards."""
    try:
        import ray
    except ImportError:
        raise MbrlError(
            "--backend ray needs Ray: pip install 'mbrl-framework[ray]' (or pip install ray)."
        ) from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
        if address is None:
            kwargs["num_cpus"] = local_cpus
            started = True
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise MbrlError(f"cannot start or reach Ray (address={address!r}): {exc}") from None
    try:
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(run_cell)
        pending = {task.remote(c): c for c in cells}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            try:
                on_result(ray.get(done[0]))
            except ray.exceptions.RayError as exc:  # the worker died, was cancelled, ...
                on_result(CellResult(cell.label, "failed", None, error=str(exc).splitlines()[0]))
    finally:
        if started:
            ray.shutdown()


# -- the command -------------------------------------------------------------------
def run_sweep(opts: SweepOptions, console: Any = None) -> int:
    """``mbrl sweep``: returns the exit status (1 if any run failed)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = console or Console()
    sweep = build_sweep(load_spec(opts))
    plans = [plan(c) for c in sweep.cells]
    counts = {k: plans.count(k) for k in ("start", "resume", "skip")}
    backend = opts.backend
    where = (
        f"{sweep.workers} local workers x {sweep.torch_threads} thread(s)"
        if backend == "local"
        else f"Ray at {opts.address or 'a local instance'}, {sweep.num_cpus:g} CPU / "
        f"{sweep.num_gpus:g} GPU per run"
    )
    console.print(
        f"sweep '{sweep.name}': {len(sweep.cells)} runs in {sweep.run_root} — "
        f"{counts['start']} to start, {counts['resume']} to resume, {counts['skip']} finished; "
        f"{where}"
    )
    if opts.dry_run:
        table = Table("run", "action", "preset", "config")
        for c, p in zip(sweep.cells, plans, strict=True):
            table.add_row(
                c.label,
                p,
                c.preset or "",
                json.dumps(c.config["agent"]) if c.config["agent"] else "",
            )
        console.print(table)
        return 0
    results: list[CellResult] = []
    todo = [c for c, p in zip(sweep.cells, plans, strict=True) if p != "skip"]
    results += [
        CellResult(c.label, "skipped", str(find_existing(c)[0]))
        for c, p in zip(sweep.cells, plans, strict=True)
        if p == "skip"
    ]
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task(
            sweep.name, total=len(sweep.cells), completed=counts["skip"], status=""
        )

        def on_result(r: CellResult) -> None:
            results.append(r)
            failed = sum(x.status == "failed" for x in results)
            ok = len(results) - failed
            progress.update(bar, advance=1, status=f"ok {ok}  failed {failed}")
            if r.status == "failed":
                progress.console.print(f"[red]failed[/red] {r.label}: {r.error} (log: {r.log})")

        if todo:
            if backend == "local":
                run_local(todo, sweep.workers, on_result)
            else:
                local_cpus = opts.workers * max(1, round(sweep.num_cpus)) if opts.workers else None
                run_ray(todo, on_result, opts.address, sweep.num_cpus, sweep.num_gpus, local_cpus)
    _write_report(sweep, results)
    report = Table("run", "status", "time", "run directory / error")
    for r in sorted(results, key=lambda r: r.label):
        detail = r.error if r.status == "failed" else (r.run_dir or "")
        report.add_row(r.label, r.status, f"{r.seconds:.0f} s" if r.seconds else "", detail)
    console.print(report)
    failed = [r for r in results if r.status == "failed"]
    console.print(
        f"{len(results) - len(failed)}/{len(results)} runs finished"
        + (
            f"; {len(failed)} failed (logs in {sweep.run_root / SWEEP_DIR / 'logs'})"
            if failed
            else ""
        )
        + f". Next: mbrl table {sweep.run_root}  /  mbrl plot {sweep.run_root}"
    )
    return 1 if failed else 0


def _write_report(sweep: Sweep, results: Iterable[CellResult]) -> None:
    from mbrl.rundir import provenance

    data = {
        **provenance(),
        "sweep": sweep.name,
        "run_root": str(sweep.run_root),
        "results": [r.__dict__ for r in results],
    }
    write_atomic(sweep.run_root / SWEEP_DIR / "last_sweep.json", json.dumps(data, indent=2) + "\n")
