"""The per-session cache: one per browser tab / API client, CPU objects only."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from ..imaging import tensor_to_pil
from ..weights import sha256_of

INVERSIONS_PER_SESSION = 3  # cached (photo, face) inversions per browser tab / API client
SESSION_TTL_S = 1800  # a session's cache is dropped this long after its last use
CacheKey = tuple[str, int]  # (photo content hash, face index)


@dataclass
class CachedInversion:
    inversion: Any  # csla_core.pipeline.Inversion (CPU tensors, PIL images; its refinement)
    # The face's own render by size (float16, CPU; with its refinement): what the UI shows and
    # what "keep detail" measures an edit's change against.
    reconstructions: dict[int, torch.Tensor] = field(default_factory=dict)
    embedding: torch.Tensor | None = None  # CLIP embedding of the face's render (edit anchor)
    # Without mappers: each prompt's optimised edit of this face, so the slider only rescales it.
    optimised: OrderedDict[tuple, Any] = field(default_factory=OrderedDict)
    refine_job: Any = None  # a refinement of this face in progress (service.background.Job)

    @property
    def reconstruction(self) -> PIL.Image.Image | None:
        """The largest reconstruction rendered so far, as a picture."""
        if not self.reconstructions:
            return None
        return tensor_to_pil(self.reconstructions[max(self.reconstructions)].float())[0]

    def use_refinement(self, refinement: Any) -> None:
        """From now on this face renders with ``refinement``: what was derived from its
        renders is dropped (made again on first use)."""
        self.inversion.refinement = refinement
        self.reconstructions.clear()
        self.embedding = None
        self.optimised.clear()


@dataclass
class SessionCache:
    """Bounded LRU of inversions keyed by (photo content hash, face index).

    Why a cache: inverting a face (detection + alignment + e4e) costs more than an edit, and a
    user edits the same face many times. Why bounded: every entry holds a decoded photo, so a tab
    uploading photo after photo must not grow without limit. Why a TTL: an abandoned session's
    photos should not be kept (the front end's session state expires after the same time).
    """

    max_items: int = INVERSIONS_PER_SESSION
    items: OrderedDict[CacheKey, CachedInversion] = field(default_factory=OrderedDict)
    before: PIL.Image.Image | None = None  # the "before" side of the last edit's comparison
    ttl_s: float = SESSION_TTL_S
    last_used: float = field(default_factory=time.monotonic)

    def get(self, key: CacheKey) -> CachedInversion | None:
        entry = self.items.get(key)
        if entry is not None:
            self.items.move_to_end(key)
        self.touch()
        return entry

    def put(self, key: CacheKey, entry: CachedInversion) -> None:
        self.items[key] = entry
        self.items.move_to_end(key)
        while len(self.items) > self.max_items:
            self.items.popitem(last=False)
        self.touch()

    def touch(self, now: float | None = None) -> None:
        self.last_used = time.monotonic() if now is None else now

    def expired(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - self.last_used > self.ttl_s


def session_cache(state: object, now: float | None = None) -> SessionCache:
    """The session's cache from what the front end stored: a new one if there is none yet (first
    call, or state the front end has dropped) or if it was last used more than its TTL ago."""
    now = time.monotonic() if now is None else now
    if isinstance(state, SessionCache):
        if not state.expired(now):
            state.touch(now)
            return state
        return SessionCache(max_items=state.max_items, ttl_s=state.ttl_s, last_used=now)
    return SessionCache(last_used=now)


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: the same photo uploaded again (new temp name) hits the cache."""
    return sha256_of(Path(path))


def compare_pair(
    gallery: Sequence[Any] | None, cache: object, index: Any
) -> tuple[PIL.Image.Image, Any] | None:
    """(before, after) for the clicked gallery item, or None when there is nothing to compare."""
    if not gallery or not isinstance(cache, SessionCache) or cache.before is None:
        return None
    index = index if isinstance(index, int) else 0
    item = gallery[min(index, len(gallery) - 1)]
    after = item[0] if isinstance(item, (tuple, list)) else item  # (image, caption) or image
    return (cache.before, after)
