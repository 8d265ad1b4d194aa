"""One request's input, cleaned: ``EditRequest`` (an edit or a sweep as a front end asks for
it, every field checked), prompts, numbers, and the errors a request may raise (what a user can
act on, and running out of memory)."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..editing.detail import DETAILS, Detail
from ..editing.strength import AUTO, is_auto
from ..errors import InputImageError, InvalidSettingError, PromptError, finite

# CLIP reads 77 tokens (a few hundred characters); longer prompts are cut to this many characters
# first, because CLIP's BPE tokenizer takes time growing faster than linearly with a word's length
# (one 40,000-letter word: 10 s) and would hold the queue.
MAX_PROMPT_CHARS = 1000
NO_PHOTO_MESSAGE = "Upload a portrait (or pick the example) first."

Warn = Callable[[str], Any]  # tells the user something without stopping (gr.Warning)


class NoPhotoError(InputImageError):
    """An edit or sweep was asked for before any photo was given."""


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


def clamp_int(value: Any, low: int, high: int, default: int) -> int:
    """``value`` as an int within [low, high]; ``default`` when it is no number (API callers)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return max(low, min(high, number))


def clean_detail(value: Any) -> Detail:
    """``detail`` as given by a front end: "keep" (default, also for None) or "none"."""
    if value is None:
        return "keep"
    text = str(value).strip().lower()
    if text not in DETAILS:
        raise InvalidSettingError(
            f"The detail setting must be one of {', '.join(DETAILS)}, got {value!r}."
        )
    return text  # type: ignore[return-value]


@dataclass(frozen=True)
class EditRequest:
    """One edit (or strength sweep) of a photo's face, as every front end asks for it, cleaned:
    make it with ``EditRequest.clean``. ``strength``: a finite number or "auto" (for a sweep,
    the largest strength); ``paste``: results pasted back into the photo (else the aligned
    crop); ``detail``: "keep" the photo's own pixels where the edit does not act, or "none"."""

    photo: str
    prompt: str
    face_index: int = 0
    source_prompt: str | None = None
    strength: float | str = 1.0
    samples: int = 4
    diversity: float = 0.5
    seed: int = 0
    paste: bool = True
    detail: Detail = "keep"

    @property
    def auto(self) -> bool:
        return self.strength == AUTO

    @classmethod
    def clean(
        cls,
        photo: Any,
        prompt: Any,
        *,
        face_index: Any = 0,
        source_prompt: Any = None,
        strength: Any = 1.0,
        samples: Any = 4,
        diversity: Any = 0.5,
        seed: Any = 0,
        paste: Any = True,
        detail: Any = "keep",
        warn: Warn | None = None,
    ) -> EditRequest:
        """Every field checked and brought into range: a readable PromptError,
        NoPhotoError or InvalidSettingError otherwise. Counts are clamped (samples 1-8)."""
        prompt = clean_prompt(prompt, warn=warn)
        source_prompt = optional_prompt(source_prompt, warn)
        if not photo:
            raise NoPhotoError(NO_PHOTO_MESSAGE)
        return cls(
            photo=str(photo),
            prompt=prompt,
            face_index=clamp_int(face_index, -(2**31), 2**31 - 1, 0),
            source_prompt=source_prompt,
            strength=AUTO if is_auto(strength) else finite(strength, "strength", 1.0),
            samples=clamp_int(samples, 1, 8, 4),
            diversity=finite(diversity, "spread (diversity)", 0.5),
            seed=clamp_int(seed, 0, 2**31 - 1, 0),
            paste=bool(paste),
            detail=clean_detail(detail),
        )
