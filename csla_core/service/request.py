"""One request's input, cleaned: prompts, numbers, and the errors a request may raise (what
a user can act on, and running out of memory)."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from typing import Any

import torch

from ..errors import CSLAError, InputImageError, PromptError

# CLIP reads 77 tokens (a few hundred characters); longer prompts are cut to this many characters
# first, because CLIP's BPE tokenizer takes time growing faster than linearly with a word's length
# (one 40,000-letter word: 10 s) and would hold the queue.
MAX_PROMPT_CHARS = 1000
NO_PHOTO_MESSAGE = "Upload a portrait (or pick the example) first."

Warn = Callable[[str], Any]  # tells the user something without stopping (gr.Warning)


class NoPhotoError(InputImageError):
    """An edit or sweep was asked for before any photo was given."""


class InvalidSettingError(CSLAError):
    """A numeric setting (strength, spread) is not a finite number (API callers)."""


# How allocators word it: CUDA "out of memory"; torch's CPU allocator "DefaultCPUAllocator: can't
# allocate memory: you tried to allocate N bytes. Error code 12 (Cannot allocate memory)" (Linux)
# or "... not enough memory ..." (where malloc returns NULL).
_OUT_OF_MEMORY_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")
_OUT_OF_MEMORY_WORDS += ("not enough memory",)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, a RuntimeError saying so (CPU allocators), or MemoryError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(words in text for words in _OUT_OF_MEMORY_WORDS)


def free_cached_memory() -> None:
    """After an out-of-memory error: give the GPU's cached blocks back so the next call can run."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def clean_prompt(text: str | None, what: str = "edit prompt", warn: Warn | None = None) -> str:
    """The prompt a model can use, or a PromptError saying what to type.

    Control characters become spaces and lone surrogates (which no encoder can send back to a
    browser) are dropped; runs of white space become one space. A prompt with nothing visible
    left is empty. Prompts longer than ``MAX_PROMPT_CHARS`` are cut (``warn`` says so).
    """
    text = text if isinstance(text, str) else ("" if text is None else str(text))
    text = "".join(
        " " if category == "Cc" else "" if category == "Cs" else char
        for char in text
        for category in (unicodedata.category(char),)
    )
    text = " ".join(text.split())
    if not any(unicodedata.category(char)[0] not in "CZ" for char in text):
        raise PromptError(
            f"The {what} is empty: type what the face should look like, e.g. “smiling” or "
            "“grey hair”."
        )
    if len(text) > MAX_PROMPT_CHARS:
        if warn is not None:
            warn(
                f"The {what} is {len(text):,} characters long: only its first "
                f"{MAX_PROMPT_CHARS:,} are used (CLIP reads at most 77 tokens)."
            )
        text = text[:MAX_PROMPT_CHARS].rstrip()
    return text


def optional_prompt(text: str | None, warn: Warn | None = None) -> str | None:
    """An optional prompt (the neutral / source one): cleaned like ``clean_prompt``, or None."""
    try:
        return clean_prompt(text, "source prompt", warn)
    except PromptError:
        return None


def finite(value: Any, what: str, default: float) -> float:
    """``value`` as a finite float (``default`` when None); InvalidSettingError otherwise."""
    if value is None:
        return float(default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise InvalidSettingError(f"The {what} must be a finite number, got {value!r}.")
    return number


def clamp_int(value: Any, low: int, high: int, default: int) -> int:
    """``value`` as an int within [low, high]; ``default`` when it is no number (API callers)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return max(low, min(high, number))
