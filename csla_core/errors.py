"""Errors a user can act on.

Every failure that reaches a user (UI, API or command line) is one of these, with a message
that says what happened and what to do. Library internals never leak past them.
"""

from __future__ import annotations

import math
from typing import Any


class CSLAError(Exception):
    """Base class: a readable problem with the user's input, files or environment."""


class WeightsError(CSLAError):
    """A weight file is missing, corrupt, of the wrong format, or failed its hash check."""


class InputImageError(CSLAError):
    """An uploaded image cannot be used (not an image, truncated, too large, ...)."""


class NoFaceError(InputImageError):
    """No usable face was found in the image."""


class PromptError(CSLAError):
    """A text prompt cannot be used (empty, ...)."""


class PrecisionError(CSLAError, ValueError):
    """A precision that does not exist, or that this device cannot run (fp16 on a CPU)."""


class InvalidSettingError(CSLAError):
    """A setting that is not one a user can give: a number that is not finite (NaN, inf), a
    choice that is not on the list. (Not a ValueError: argparse would replace its message.)"""


def finite(value: Any, what: str, default: float | None = None) -> float:
    """``value`` as a finite float (``default`` when None is allowed and given); else
    InvalidSettingError with the one message every front end shows for it."""
    if value is None and default is not None:
        return float(default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise InvalidSettingError(f"The {what} must be a finite number, got {value!r}.")
    return number
