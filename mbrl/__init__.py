"""mbrl: model-based reinforcement learning.

Sub-packages: ``mbrl.data`` (replay buffer, D4RL loader, scores), ``mbrl.models``
(dynamics models and the rollout engine), ``mbrl.planners`` (CEM/iCEM/MPPI),
``mbrl.agents`` (one file per algorithm), ``mbrl.envs`` (environment specs with
termination/reward functions).
"""

__version__ = "0.1.0"
