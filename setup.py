"""Packages of the wheel (everything else is in pyproject.toml).

The list is computed here only so that every preset folder ``configs/<agent>/`` is a
package (``mbrl.configs.<agent>``) without a pyproject edit per agent: setuptools warns
about data folders that look like packages but are not listed.
"""

from pathlib import Path

from setuptools import setup

PACKAGES = [
    "mbrl", "mbrl.data", "mbrl.models", "mbrl.planners", "mbrl.results",
    "mbrl.agents", "mbrl.envs", "mbrl.envs.examples", "mbrl.configs",
]  # fmt: skip
PRESET_DIRS = sorted(
    d.name
    for d in (Path(__file__).parent / "configs").iterdir()
    if d.is_dir() and d.name.isidentifier()
)
setup(packages=[*PACKAGES, *(f"mbrl.configs.{d}" for d in PRESET_DIRS)])
