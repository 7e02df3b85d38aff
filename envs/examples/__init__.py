"""Example custom environments: each one file, registered with ``register_env``."""
