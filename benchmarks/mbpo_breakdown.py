"""Wall-clock breakdown of MBPO runs from their ``metrics.csv`` (no re-running).

MBPO logs cumulative wall-clock counters (see :mod:`mbrl.agents.mbpo`):
``time/sac_update_s``, ``time/model_train_s``, ``time/rollout_s`` and ``time/env_s``.
This script reads the last value of each from every run directory given, with the
run's total wall time (the last ``wall_time`` in ``metrics.csv``), and prints JSON and a
markdown table of seconds and shares; "other" is evaluation, checkpoints and the loop's
own overhead. The issue's target: everything but SAC updates under 25% of the wall time.

    .venv/bin/python benchmarks/mbpo_breakdown.py RUN_DIR [RUN_DIR ...] [--out results/NAME]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mbrl.rundir import read_metrics

PARTS = (
    ("sac_update_s", "SAC updates"),
    ("model_train_s", "model training"),
    ("rollout_s", "model rollouts"),
    ("env_s", "env steps + acting"),
)


def breakdown(run_dir: Path) -> dict[str, Any]:
    rows = read_metrics(run_dir / "metrics.csv")
    if not rows:
        raise SystemExit(f"{run_dir}/metrics.csv has no rows")
    last: dict[str, float] = {}
    for r in rows:
        if r["key"].startswith("time/"):
            last[r["key"][5:]] = float(r["value"])
    wall = max(float(r["wall_time"]) for r in rows)
    step = max(int(r["step"]) for r in rows)
    out: dict[str, Any] = {"run_dir": str(run_dir), "env_steps": step, "wall_s": round(wall, 1)}
    known = 0.0
    for key, _ in PARTS:
        out[key] = round(last.get(key, 0.0), 1)
        known += last.get(key, 0.0)
    out["other_s"] = round(wall - known, 1)
    out["non_sac_share"] = round((wall - last.get("sac_update_s", 0.0)) / wall, 4)
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    head = "| run | env steps | wall s | " + " | ".join(n for _, n in PARTS) + " | other |"
    lines = [head, "|---|---:|---:|" + "---:|" * (len(PARTS) + 1)]
    for r in results:
        cells = [f"{r[k]:.0f} ({100 * r[k] / r['wall_s']:.1f}%)" for k, _ in PARTS]
        cells.append(f"{r['other_s']:.0f} ({100 * r['other_s'] / r['wall_s']:.1f}%)")
        lines.append(
            f"| `{Path(r['run_dir']).name}` | {r['env_steps']} | {r['wall_s']:.0f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    results = [breakdown(d) for d in args.run_dirs]
    print(json.dumps(results, indent=1))
    md = markdown(results)
    print(md)
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(results, indent=1) + "\n")
        Path(f"{args.out}.md").write_text(md)
    return results


if __name__ == "__main__":
    main()
