"""YAML presets (installed as ``mbrl.configs``): ``<agent>/<preset>.yaml``.

Each preset carries the paper's values with a comment naming the source.
"""
