"""User-facing errors.

Anything a user can cause (a bad file, field, value or name) raises :class:`MbrlError`
with a message that names the culprit and says how to fix it. The CLI prints the
message alone (no traceback) and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MbrlError(Exception):
    """An error caused by user input; its message is shown without a traceback."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` if none is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return f" Did you mean '{lowered[match[0]]}'?" if match else ""


def unknown_name(kind: str, name: str, choices: Iterable[str], hint: str = "") -> MbrlError:
    """Build the standard error for an unknown registered name."""
    choices = sorted(choices)
    listing = ", ".join(choices[:40]) if choices else "(none registered)"
    if len(choices) > 40:
        listing += f", ... ({len(choices)} in all)"
    msg = f"unknown {kind} '{name}'.{did_you_mean(name, choices)} Known {kind}s: {listing}."
    if hint:
        msg += f" {hint}"
    return MbrlError(msg)
