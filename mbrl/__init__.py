"""mbrl: model-based reinforcement learning.

Sub-packages: ``mbrl.data`` (replay buffer, D4RL loader, scores), ``mbrl.models``
(dynamics models and the rollout engine), ``mbrl.planners`` (CEM/iCEM/MPPI),
``mbrl.agents`` (one file per algorithm), ``mbrl.envs`` (environment specs with
termination/reward functions).
"""

import os

# With OpenMP's default spin-waiting, 2 torch threads slow down ~30x whenever another
# process shares a 2-core machine (measured: results/model_train.md); passive waiting
# degrades gracefully. Only a default: the user's environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
