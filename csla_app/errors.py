"""Exceptions -> messages: what a handler raises reaches the user as a ``gr.Error`` they can act
on, never as a stack trace."""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
from collections.abc import Callable

import gradio as gr

from csla_core.errors import CSLAError, InputImageError, NoFaceError, PromptError, WeightsError
from csla_core.service import (
    InvalidSettingError,
    NoPhotoError,
    free_cached_memory,
    is_out_of_memory,
)

LOG = logging.getLogger("csla.app")

# The most specific first: NoPhotoError is an InputImageError.
TITLES = (
    (NoFaceError, "No face found"),
    (NoPhotoError, "No photo"),
    (InputImageError, "Cannot use this image"),
    (PromptError, "Prompt problem"),
    (InvalidSettingError, "Invalid setting"),
    (WeightsError, "Model weights missing"),
)


def user_error(exc: BaseException) -> gr.Error:
    """Any exception -> a gr.Error with a message a user can act on."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, CSLAError):
        return gr.Error(str(exc), title=error_title(exc), print_exception=False)
    if is_out_of_memory(exc):
        free_cached_memory()
        return gr.Error(
            "Out of memory while processing this request. Try fewer samples, a smaller photo, or "
            "try again in a moment when fewer people are using the app.",
            title="Out of memory",
            print_exception=False,
        )
    LOG.error("Unexpected error:\n%s", "".join(traceback.format_exception(exc)))
    return gr.Error(
        f"Something went wrong ({type(exc).__name__}: {exc}). Your photo is kept; please try "
        "again, or with another photo.",
        title="Unexpected error",
        print_exception=False,
    )


def error_title(exc: CSLAError) -> str:
    return next((title for kind, title in TITLES if isinstance(exc, kind)), "Error")


def friendly(fn: Callable) -> Callable:
    """Turn every exception raised by an event handler (a function or a generator) into a
    readable gr.Error."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise user_error(exc) from exc

        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise user_error(exc) from exc

    return wrapper
