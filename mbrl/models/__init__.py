"""Dynamics models and the batched rollout engine (model-as-environment)."""
