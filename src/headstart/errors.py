"""User-facing errors.

Every error a user can cause by their input is a :class:`HeadstartError`: it names the bad value and
says how to fix it. The CLI prints these as one clean message (no traceback); anything else is a bug.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class HeadstartError(ValueError):
    """An error caused by user input or environment, with a message that says how to fix it."""


class DataError(HeadstartError):
    """Bad or unusable training / evaluation data."""


class BackboneError(HeadstartError):
    """An unknown, unavailable or malformed pretrained backbone."""


class UnsafeWeightsError(HeadstartError):
    """A weights file that cannot be loaded safely (it needs arbitrary code to unpickle)."""


def did_you_mean(value: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' Did you mean ...?' suffix for an error message, or '' when nothing is close."""
    close = difflib.get_close_matches(value, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """Validate ``value`` against ``choices`` with a generated, did-you-mean error message."""
    choices = list(choices)
    if value not in choices:
        raise HeadstartError(
            f"The {name!r} parameter must be one of {choices}; got {value!r} instead."
            + did_you_mean(str(value), choices)
        )
    return value
