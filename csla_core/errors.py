"""Errors a user can act on.

Every failure that reaches a user (UI, API or command line) is one of these, with a message
that says what happened and what to do. Library internals never leak past them.
"""

from __future__ import annotations


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
