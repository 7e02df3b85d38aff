"""Data layer: replay buffer, D4RL-format datasets, normalized scores."""
