"""The ``mbrl`` command line.

``mbrl COMMAND --help`` documents each command. Leaf commands are parsed by tyro
from typed dataclasses and function signatures, so every config field is a flag.
User errors (:class:`mbrl.errors.MbrlError`) print one message and exit 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
from rich.console import Console
from rich.table import Table

from mbrl.errors import MbrlError, did_you_mean

Handler = Callable[[list[str]], int]
console = Console()
err_console = Console(stderr=True)


@dataclass(frozen=True)
class Command:
    handler: Handler
    summary: str


def dispatch(prog: str, commands: dict[str, Command], argv: list[str], intro: str = "") -> int:
    """Run ``commands[argv[0]]`` with the rest of ``argv``; print help otherwise."""
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print_commands(prog, commands, intro)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        raise MbrlError(
            f"unknown command '{prog} {name}'.{did_you_mean(name, commands)} "
            f"Run '{prog} --help' for the list."
        )
    return commands[name].handler(rest)


def print_commands(prog: str, commands: dict[str, Command], intro: str = "") -> None:
    console.print(f"usage: {prog} COMMAND [ARGS]...")
    if intro:
        console.print(f"\n{intro}")
    table = Table(show_header=False, box=None, pad_edge=False)
    for name, cmd in commands.items():
        table.add_row(f"  [bold]{name}[/bold]", cmd.summary)
    console.print("\ncommands:")
    console.print(table)
    console.print(f"\nRun '{prog} COMMAND --help' for a command's options.")


# -- train -------------------------------------------------------------------------
def _pop_option(argv: list[str], *names: str) -> tuple[str | None, list[str]]:
    """Remove ``--name VALUE`` / ``--name=VALUE`` from argv, returning the value."""
    out, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        key = arg.split("=", 1)[0]
        if key in names:
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
            else:
                raise MbrlError(f"{key} needs a value.")
        else:
            out.append(arg)
        i += 1
    return value, out


def train_usage() -> None:
    from mbrl.config import list_presets
    from mbrl.registry import AGENTS

    console.print(
        "usage: mbrl train AGENT [--preset NAME] [--config FILE.yaml] [--dataset SOURCE] "
        "[--FIELD VALUE]..."
    )
    console.print("       mbrl train --resume RUN_DIR [--run.total-steps N]\n")
    console.print(
        "Train an agent online on --run.env, or offline on --run.dataset. Values come\n"
        "from the agent's defaults, then the preset (configs/AGENT/NAME.yaml) or --config\n"
        "file, then command-line overrides; the resolved config is saved in the run dir.\n"
    )
    table = Table(title="agents", title_justify="left")
    table.add_column("agent")
    table.add_column("description")
    table.add_column("presets")
    for entry in AGENTS.entries():
        table.add_row(entry.name, entry.description, ", ".join(list_presets(entry.name)))
    if not len(AGENTS):
        table.add_row("(none registered yet)", "", "")
    console.print(table)
    console.print("\n'mbrl train AGENT --help' lists every field of that agent and of the run.")


def cmd_train(argv: list[str]) -> int:
    from mbrl import train as training
    from mbrl.config import RunConfig, deep_merge, from_dict, load_preset, load_yaml, to_dict
    from mbrl.registry import AGENTS
    from mbrl.rundir import RunDir

    resume, argv = _pop_option(argv, "--resume")
    if resume is not None:
        budget, argv = _pop_option(argv, "--run.total-steps", "--run.total_steps")
        if argv:
            raise MbrlError(
                f"--resume continues a run with its saved config (only --run.total-steps "
                f"may raise its budget); drop the other arguments ({' '.join(argv)})."
            )
        run_dir = RunDir.open(resume)
        name = training.saved_agent_name(run_dir)
        cfg = training.load_run_config(run_dir, _config_class(AGENTS.get(name)))
        if budget is not None:
            try:
                total = int(budget)
            except ValueError:
                raise MbrlError(f"--run.total-steps {budget!r}: give a whole number.") from None
            training.extend_run(run_dir, name, cfg, total)
        out = training.train(name, cfg, resume=run_dir.path)
        _print_run_summary(out)
        return 0
    if not argv or argv[0].startswith("-"):
        train_usage()
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    name, argv = argv[0], argv[1:]
    entry = AGENTS.get(name)
    cfg_cls = _config_class(entry)
    preset, argv = _pop_option(argv, "--preset")
    config_file, argv = _pop_option(argv, "--config")
    dataset, argv = _pop_option(argv, "--dataset")
    if dataset is not None:  # shorthand of --run.dataset (offline agents)
        argv = [*argv, "--run.dataset", dataset]
    merged: dict[str, Any] = {"agent": to_dict(cfg_cls()), "run": to_dict(RunConfig())}
    if preset is not None:
        merged = deep_merge(merged, _split_preset(load_preset(name, preset), preset))
    if config_file is not None:
        merged = deep_merge(merged, _split_preset(load_yaml(config_file), config_file))
    source = f"preset '{preset}'" if preset else (config_file or "defaults")
    default: training.TrainConfig[Any] = training.TrainConfig(
        agent=from_dict(cfg_cls, merged["agent"], source=f"{source} (agent)"),
        run=from_dict(RunConfig, merged["run"], source=f"{source} (run)"),
    )
    cfg = tyro.cli(
        training.TrainConfig[cfg_cls],  # type: ignore[valid-type]
        default=default,
        args=argv,
        prog=f"mbrl train {name}",
        description=f"{entry.description}\n\nPresets: "
        + (", ".join(_presets(name)) or "none")
        + " (--preset NAME or --config FILE.yaml).",
    )
    out = training.train(name, cfg)
    _print_run_summary(out)
    return 0


def _print_run_summary(run_dir: Any) -> None:
    from rich.markdown import Markdown

    results = run_dir.path / "results.md"
    if results.is_file():
        console.print(Markdown(results.read_text()))
    console.print(f"run finished: {run_dir.path}  (tensorboard --logdir {run_dir.path})")


def _config_class(entry: Any) -> type:
    if entry.config is None:
        raise MbrlError(f"agent '{entry.name}' was registered without a config class.")
    cls: type = entry.config
    return cls


def _presets(name: str) -> list[str]:
    from mbrl.config import list_presets

    return list_presets(name)


def _split_preset(data: dict[str, Any], source: str) -> dict[str, Any]:
    unknown = sorted(set(data) - {"agent", "run"})
    if unknown:
        raise MbrlError(
            f"{source}: top-level keys must be 'agent' and 'run', got {', '.join(unknown)}."
        )
    return data


# -- eval --------------------------------------------------------------------------
def cmd_eval(argv: list[str]) -> int:
    def evaluate(
        run_dir: Annotated[Path, tyro.conf.Positional],
        episodes: int = 10,
        video: bool = False,
        device: str = "cpu",
    ) -> None:
        """Re-evaluate the latest checkpoint of a run directory.

        The result, with the checkpoint, commit, date and machine, is also written to
        RUN_DIR/evals/eval-<date>-<N>ep.json.

        Args:
            run_dir: the run's folder (holds config.yaml and checkpoints/).
            episodes: deterministic evaluation episodes.
            video: also write an MP4 of the first episode to RUN_DIR/videos/.
            device: torch device for the policy.
        """
        from mbrl import train as training
        from mbrl.registry import AGENTS
        from mbrl.rundir import RunDir

        rd = RunDir.open(run_dir)
        name = training.saved_agent_name(rd)
        cls = AGENTS.get(name).obj
        if not hasattr(cls, "evaluate_run"):
            raise MbrlError(f"agent '{name}' does not support re-evaluation (no evaluate_run).")
        from mbrl.checkpoint import find_latest
        from mbrl.config import write_atomic
        from mbrl.rundir import provenance

        checkpoint = find_latest(rd.path)
        result = cls.evaluate_run(rd, episodes=episodes, video=video, device=device)
        # Keep every re-evaluation beside the run (summary.json stays the training's own).
        record = {
            "checkpoint": checkpoint.name if checkpoint else None,
            "episodes": episodes,
            "device": device,
            "result": result,
            **provenance(),
        }
        stamp = record["date"].replace(":", "").replace("-", "")[:15]
        out = rd.path / "evals" / f"eval-{stamp}-{episodes}ep.json"
        write_atomic(out, json.dumps(record, indent=2, default=str) + "\n")
        table = Table("metric", "value")
        for key, value in result.items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        console.print(table)
        console.print(f"saved to {out}")

    tyro.cli(evaluate, args=argv, prog="mbrl eval")
    return 0


# -- data --------------------------------------------------------------------------
def cmd_data(argv: list[str]) -> int:
    commands = {
        "info": Command(_data_info, "Sizes, dims, episodes, returns and ref scores of a dataset."),
        "convert": Command(_data_convert, "Convert between D4RL HDF5, .npz and Minari."),
        "download": Command(_data_download, "Download a D4RL dataset id into the d4rl cache."),
        "collect": Command(
            _data_collect, "Generate D4RL-style datasets on any env (random, medium, ...)."
        ),
    }
    return dispatch("mbrl data", commands, argv, intro="Datasets in the D4RL format.")


def _data_info(argv: list[str]) -> int:
    def info(source: Annotated[str, tyro.conf.Positional]) -> None:
        """Describe a dataset: a D4RL id (d4rl:hopper-medium-v2), minari:ID or an .hdf5 path.

        Args:
            source: dataset id or file path.
        """
        from mbrl.data.datasets import print_info

        print_info(source, console=console)

    tyro.cli(info, args=argv, prog="mbrl data info")
    return 0


def _data_convert(argv: list[str]) -> int:
    def convert(
        src: Annotated[str, tyro.conf.Positional],
        dst: Annotated[Path, tyro.conf.Positional],
        overwrite: bool = False,
    ) -> None:
        """Convert a dataset (D4RL .hdf5 or id, .npz, minari:ID) to .hdf5 (D4RL layout) or .npz.

        The source is only read; the destination is written atomically.

        Args:
            src: source dataset (id or path).
            dst: destination file (.hdf5 or .npz).
            overwrite: replace an existing destination file.
        """
        from mbrl.data.datasets import convert as do_convert

        do_convert(src, dst, overwrite=overwrite)
        console.print(f"wrote {dst}")

    tyro.cli(convert, args=argv, prog="mbrl data convert")
    return 0


def _data_download(argv: list[str]) -> int:
    def download(dataset: Annotated[str, tyro.conf.Positional]) -> None:
        """Download a D4RL dataset (e.g. d4rl:hopper-medium-v2) into $D4RL_DATASET_DIR
        (default ~/.d4rl/datasets), under the file name the d4rl package uses.

        Args:
            dataset: a d4rl: dataset id.
        """
        from mbrl.data.datasets import resolve_dataset

        path = resolve_dataset(dataset)
        console.print(f"{dataset}: {path}")

    tyro.cli(download, args=argv, prog="mbrl data download")
    return 0


def _data_collect(argv: list[str]) -> int:
    def collect(
        env: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="ENV")],
        out: Path,
        kinds: str = "random,medium,medium-replay",
        behavior_steps: int = 60_000,
        size: int = 100_000,
        seed: int = 0,
        checkpoint_every: int = 4_000,
        learning_starts: int = 10_000,
        eval_episodes: int = 5,
        ref_episodes: int = 10,
        medium_fraction: float = 1.0 / 3.0,
        overwrite: bool = False,
        progress: bool = True,
        threads: int = 1,
    ) -> None:
        """Generate D4RL-format datasets on ENV by the D4RL protocol: train a behaviour SAC
        (checkpoints every --checkpoint-every steps, each evaluated), then write
        OUT/<env>-<kind>.hdf5 for each kind. Rerunning the same command resumes: training
        continues from the last checkpoint and finished files are skipped.

        Args:
            env: registered env id, e.g. HalfCheetah-v4.
            out: output folder.
            kinds: comma-separated, of random, medium, medium-replay, expert, medium-expert.
            behavior_steps: behaviour SAC env steps (1 update each); D4RL's ~1M.
            size: rows of random/medium/expert (D4RL: 1M); medium-expert has 2x.
            seed: seed of SAC, resets and sampled actions.
            checkpoint_every: env steps between evaluated behaviour checkpoints.
            learning_starts: uniform-random warm-up steps of SAC.
            eval_episodes: deterministic episodes per checkpoint evaluation.
            ref_episodes: episodes for the random and best reference scores.
            medium_fraction: medium target, as a fraction of the way from random to best.
            overwrite: discard this folder's behaviour run and datasets and start over.
            progress: show progress bars.
            threads: torch threads.
        """
        from mbrl.data.generate import CollectConfig
        from mbrl.data.generate import collect as do_collect

        cfg = CollectConfig(
            env=env,
            out=out,
            kinds=tuple(kinds.replace(",", " ").split()),
            behavior_steps=behavior_steps,
            size=size,
            seed=seed,
            checkpoint_every=checkpoint_every,
            learning_starts=learning_starts,
            eval_episodes=eval_episodes,
            ref_episodes=ref_episodes,
            medium_fraction=medium_fraction,
            overwrite=overwrite,
            progress=progress,
            threads=threads,
        )
        written = do_collect(
            cfg, log=lambda msg: console.print(msg, highlight=False, soft_wrap=True)
        )
        for kind, path in written.items():
            console.print(f"{kind}: {path}")

    tyro.cli(collect, args=argv, prog="mbrl data collect")
    return 0


# -- listings ----------------------------------------------------------------------
def cmd_envs(argv: list[str]) -> int:
    def envs(dims: bool = True, load: tuple[str, ...] = ()) -> None:
        """List registered environments, their dims, and whether termination/reward
        functions exist (a model can only roll out where they do).

        Args:
            dims: show observation/action sizes (builds envs that don't declare them).
            load: modules or .py files with custom envs to import (and so register) first.
        """
        from mbrl.envs import import_env_module
        from mbrl.registry import ENVS

        for target in load:
            import_env_module(target)

        table = Table()
        table.add_column("env", no_wrap=True)
        table.add_column("obs", justify="right")
        table.add_column("act", justify="right")
        table.add_column("term fn")
        table.add_column("rew fn")
        table.add_column("plan rew")  # a shaped planning reward (reward_source=planning)
        table.add_column("D4RL ref min / max", no_wrap=True)
        for entry in ENVS.entries():
            spec = entry.obj
            o, a = spec.dims() if dims else (spec.obs_dim, spec.act_dim)
            term = "never" if spec.never_terminates else _yes(spec.termination_fn)
            refs = (
                f"{spec.ref_min_score:.1f} / {spec.ref_max_score:.1f}"
                if spec.ref_min_score is not None and spec.ref_max_score is not None
                else ""
            )
            table.add_row(
                entry.name, str(o), str(a), term, _yes(spec.reward_fn),
                "yes" if spec.planning_reward_fn is not None else "", refs,
            )  # fmt: skip
        console.print(table)
        console.print(f"{len(ENVS)} environments. Add your own with mbrl.envs.register_env.")

    tyro.cli(envs, args=argv, prog="mbrl envs")
    return 0


def _yes(fn: object) -> str:
    return "yes" if fn is not None else "no"


def cmd_agents(argv: list[str]) -> int:
    def agents(name: Annotated[str | None, tyro.conf.Positional] = None) -> None:
        """List registered agents, or show one agent's config fields and defaults.

        Args:
            name: an agent to describe in full.
        """
        from mbrl.registry import AGENTS

        if name is None:
            table = Table("agent", "config", "description", "presets")
            for entry in AGENTS.entries():
                cfg = entry.config.__name__ if entry.config else ""
                table.add_row(entry.name, cfg, entry.description, ", ".join(_presets(entry.name)))
            console.print(table)
            if not len(AGENTS):
                console.print("no agents registered yet.")
            return
        entry = AGENTS.get(name)
        console.print(f"[bold]{entry.name}[/bold]: {entry.description}")
        _print_config(_config_class(entry))
        console.print(f"presets: {', '.join(_presets(name)) or 'none'}")

    tyro.cli(agents, args=argv, prog="mbrl agents")
    return 0


def _print_config(cls: type, prefix: str = "agent.") -> None:
    table = Table("field", "type", "default")
    default = cls()
    for f in fields(default):
        table.add_row(prefix + f.name, str(f.type), repr(getattr(default, f.name)))
    console.print(table)


# -- model -------------------------------------------------------------------------
def cmd_model(argv: list[str]) -> int:
    commands = {
        "list": Command(_model_list, "List registered dynamics models and their configs."),
        "eval": Command(
            _model_eval, "Fit dynamics models and compare k-step open-loop prediction error."
        ),
    }
    return dispatch("mbrl model", commands, argv, intro="Learned dynamics models.")


def _model_list(argv: list[str]) -> int:
    def models() -> None:
        """List registered dynamics models."""
        from mbrl.registry import MODELS

        table = Table("model", "config", "description")
        for entry in MODELS.entries():
            table.add_row(
                entry.name, entry.config.__name__ if entry.config else "", entry.description
            )
        console.print(table)

    tyro.cli(models, args=argv, prog="mbrl model list")
    return 0


def _model_eval(argv: list[str]) -> int:
    from mbrl.model_eval import ModelEvalRun, load_model_eval_config, model_eval
    from mbrl.rundir import RunDir

    resume, argv = _pop_option(argv, "--resume")
    if resume is not None:
        if argv:
            raise MbrlError(f"--resume uses the run's saved config; drop {' '.join(argv)}.")
        run_dir = RunDir.open(resume)
        model_eval(load_model_eval_config(run_dir), console=console, resume=run_dir)
        return 0
    cfg = tyro.cli(
        ModelEvalRun,
        args=argv,
        prog="mbrl model eval",
        description="Fit dynamics models on --run.dataset (or on random-policy data "
        "collected from --run.env) and report k-step open-loop prediction error on "
        "held-out trajectories, as a table, a plot and a run directory. "
        "'mbrl model eval --resume RUN_DIR' continues an interrupted run.",
    )
    model_eval(cfg, console=console)
    return 0


# -- sweep / table / plot ----------------------------------------------------------
def cmd_sweep(argv: list[str]) -> int:
    from mbrl.results.sweep import SweepOptions, run_sweep

    opts = tyro.cli(
        SweepOptions,
        args=argv,
        prog="mbrl sweep",
        description="Run a grid of agents x envs/datasets x seeds (x overrides) from a "
        "YAML file (configs/sweeps/*.yaml) and/or flags, on a local process pool or a Ray "
        "cluster. Re-running skips finished runs and resumes interrupted ones.",
    )
    return run_sweep(opts, console=console)


def cmd_table(argv: list[str]) -> int:

    def table(
        runs: Annotated[tuple[Path, ...], tyro.conf.Positional],
        out: Path | None = None,
        formats: tuple[Literal["md", "csv", "tex"], ...] = ("md", "csv", "tex"),
        budgets: tuple[int, ...] = (),
        compare: tuple[str, str] | None = None,
        mixed: Literal["split", "error"] = "split",
        reps: int = 10_000,
        ci: float = 0.95,
        seed: int = 0,
    ) -> None:
        """Collect finished run directories into a results table: per task and algorithm
        mean ± std of the final evaluation over seeds, normalized scores, returns at step
        budgets; aggregate mean/median/IQM of normalized scores with stratified-bootstrap
        CIs (Agarwal et al. 2021).

        Args:
            runs: run directories or folders holding them (searched recursively).
            out: also write OUT.md, OUT.csv, OUT.tex and OUT.provenance.json.
            formats: which files to write with --out.
            budgets: also report the return at these step budgets (env steps for online
                runs, gradient updates for offline ones).
            compare: A B: probability that algorithm A improves on B (P(A > B)).
            mixed: runs of one agent and task with different configs: 'split' into
                labelled rows, or 'error'.
            reps: bootstrap replicates.
            ci: confidence level of the intervals.
            seed: seed of the bootstrap.
        """
        from mbrl.results.table import build_table, to_markdown, write_table

        t = build_table(runs, budgets, compare, mixed=mixed, reps=reps, ci=ci, seed=seed)
        # raw markdown: wide tables stay unwrapped and can be pasted as they are
        console.print(to_markdown(t, provenance_footer=False), markup=False, soft_wrap=True)
        if out is not None:
            for path in write_table(t, out, formats):
                console.print(f"wrote {path}")

    tyro.cli(table, args=argv, prog="mbrl table")
    return 0


def cmd_plot(argv: list[str]) -> int:

    def plot(
        runs: Annotated[tuple[Path, ...], tyro.conf.Positional],
        out: Path = Path("plots"),
        formats: tuple[Literal["png", "svg", "pdf"], ...] = ("png", "svg"),
        metric: str = "eval/return",
        mixed: Literal["split", "error"] = "split",
        reps: int = 2_000,
        ci: float = 0.95,
        seed: int = 0,
    ) -> None:
        """Plot learning curves (mean and a bootstrap CI band over seeds) per task and
        algorithm, the aggregate IQM curve of normalized scores and performance profiles,
        into OUT/ (with curves.csv holding the plotted values). Unfinished runs are
        included in the learning curves.

        Args:
            runs: run directories or folders holding them (searched recursively).
            out: folder for the figures.
            formats: image formats.
            metric: the metrics.csv key to plot.
            mixed: runs of one agent and task with different configs: 'split' or 'error'.
            reps: bootstrap replicates of the bands.
            ci: confidence level of the bands.
            seed: seed of the bootstrap.
        """
        from mbrl.results.plot import plot_runs

        for path in plot_runs(
            runs, out, formats=formats, metric=metric, mixed=mixed, reps=reps, ci=ci, seed=seed
        ):
            console.print(f"wrote {path}")

    tyro.cli(plot, args=argv, prog="mbrl plot")
    return 0


# -- entry point -------------------------------------------------------------------
COMMANDS: dict[str, Command] = {
    "train": Command(cmd_train, "Train an agent online (--run.env) or offline (--run.dataset)."),
    "eval": Command(cmd_eval, "Re-evaluate a run's latest checkpoint (optionally with video)."),
    "data": Command(cmd_data, "Datasets: info, convert, download, collect."),
    "envs": Command(cmd_envs, "List environments with dims and termination/reward functions."),
    "agents": Command(cmd_agents, "List agents and their configs."),
    "model": Command(cmd_model, "Dynamics models: list, eval (k-step prediction error)."),
    "sweep": Command(cmd_sweep, "Run a grid of agents x tasks x seeds (local pool or Ray)."),
    "table": Command(cmd_table, "Results table of runs: mean ± std, normalized, IQM + CIs."),
    "plot": Command(cmd_plot, "Learning curves, IQM curves and performance profiles."),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in {"-V", "--version"}:
        from mbrl import __version__

        console.print(f"mbrl {__version__}")
        return 0
    try:
        return dispatch(
            "mbrl",
            COMMANDS,
            args,
            intro="Model-based reinforcement learning: train, evaluate and compare agents.",
        )
    except MbrlError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
