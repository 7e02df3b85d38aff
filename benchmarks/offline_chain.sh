#!/usr/bin/env bash
# Issue #5's whole offline table as two resumable chains, one core each, on disjoint
# datasets: `offline_chain.sh hopper` and `offline_chain.sh halfcheetah`, started side by
# side in the background. Each waits for its datasets (made by the two `mbrl data collect`
# commands in results/offline_20k.md), then runs, via benchmarks/offline_table.py:
#   medium: mopo (fits the shared model, --model-seed 0), ravl (N=10), bc at seed 0;
#   medium-replay: the same; bc at seeds 1-2; mobile at seed 0; everything at seeds 1-2.
# Rerunning skips finished runs and resumes unfinished ones. The table:
#   python benchmarks/offline_table.py --dataset ... (all four) --seeds 0 1 2 --out PREFIX
# Environment: DATASETS (default /work/datasets), ROOT (default /work/bench_runs/offline),
# UPDATES (default 20000), EVAL_EVERY (default 2000).
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATASETS=${DATASETS:-/work/datasets}
ROOT=${ROOT:-/work/bench_runs/offline}
case "${1:-}" in
  hopper)
    M=$DATASETS/Hopper-v4-s1/hopper-v4-medium.hdf5=hopper-medium
    R=$DATASETS/Hopper-v4-s1/hopper-v4-medium-replay.hdf5=hopper-medium-replay ;;
  halfcheetah)
    M=$DATASETS/HalfCheetah-v4/halfcheetah-v4-medium.hdf5=halfcheetah-medium
    R=$DATASETS/HalfCheetah-v4/halfcheetah-v4-medium-replay.hdf5=halfcheetah-medium-replay ;;
  *) echo "usage: $0 hopper|halfcheetah" >&2; exit 2 ;;
esac
COMMON=(--updates "${UPDATES:-20000}" --eval-every "${EVAL_EVERY:-2000}" --model-seed 0
        --root "$ROOT" --agent-args "ravl:--agent.num-critics=10"
        --agent-args "mopo:--agent.model-max-epochs=100")
t() { "$PY" benchmarks/offline_table.py "$@" "${COMMON[@]}"; }
while [ ! -f "${R%%=*}" ]; do sleep 60; done  # medium-replay is written last
t --dataset "$M" --seeds 0 --agents mopo ravl bc
t --dataset "$R" --seeds 0 --agents mopo ravl bc
t --dataset "$M" --dataset "$R" --seeds 1 2 --agents bc
t --dataset "$M" --dataset "$R" --seeds 0 --agents mobile
t --dataset "$M" --dataset "$R" --seeds 1 2
