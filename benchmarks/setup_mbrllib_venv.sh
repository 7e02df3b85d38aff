#!/usr/bin/env bash
# Create a separate virtualenv with mbrl-lib (PyPI "mbrl" 0.2.0) for the rollout
# comparison in benchmarks/bench_rollout.py. It must be separate: mbrl-lib also imports
# as `mbrl`. Usage: bash benchmarks/setup_mbrllib_venv.sh [VENV_DIR]
#
# torch is pinned (the same version as the project's venv) and installed first, so
# mbrl-lib's own requirements never pull a different (possibly multi-GB CUDA) build.
# On a CPU-only machine point pip at a CPU wheel (a local wheel via PIP_FIND_LINKS, or
# a CPU index via PIP_EXTRA_INDEX_URL) before running this.
set -euo pipefail

VENV="${1:-/work/mbrllib-venv}"
PYTHON="${PYTHON:-python3.11}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet "torch==${TORCH_VERSION}"
# mbrl-lib 0.2.0 pins old hydra/omegaconf versions that do not install on Python 3.11:
# install it without dependencies and add the ones ModelEnv and GaussianMLP import.
"$VENV/bin/pip" install --quiet --no-deps "mbrl==0.2.0"
"$VENV/bin/pip" install --quiet "hydra-core>=1.1" "omegaconf>=2.1" "numpy<2.3" "gymnasium>=0.26" termcolor tqdm
# -P: do not put the current directory on sys.path (this repo also has an `mbrl` package)
"$VENV/bin/python" -P - <<'PY'
import torch
import mbrl
from mbrl.models import GaussianMLP, ModelEnv, OneDTransitionRewardModel  # noqa: F401

print(f"mbrl-lib {mbrl.__version__} with torch {torch.__version__} is ready")
PY
