"""Where first-run mappers are kept, so that a restart does not calibrate again.

A Hugging Face Space's disk is lost at every restart, sleep and push. In order:

1. ``CSLA_CACHE`` set: the mappers are written there (``weights.mappers_cache_dir``); point it
   at a mounted volume (a Storage Bucket, e.g. ``CSLA_CACHE=/data/csla``) and they survive.
2. ``HF_TOKEN`` and ``CSLA_MAPPERS_REPO``: once made, they are uploaded to that model repo with
   a model card, and the next start downloads them (``loading.find_mappers``). Never the
   Space's own repository: a commit to it rebuilds and restarts the Space.
3. Otherwise on a Space: the page says that the next restart calibrates again, and how to keep
   them. Elsewhere the user's cache (``~/.cache/csla``) keeps them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..weights import mappers_cache_dir

logger = logging.getLogger(__name__)

HOW_TO_KEEP = (
    "To keep them, mount a storage volume and set CSLA_CACHE to a folder on it (e.g. "
    "/data/csla), or add an HF_TOKEN secret and a CSLA_MAPPERS_REPO variable (a model repo "
    "of yours, not this Space's)."
)


@dataclass(frozen=True)
class MapperStorage:
    """``kind``: "volume", "hub", "space disk" (lost at restart) or "user cache"."""

    kind: str
    where: str
    token: str | None = None

    @property
    def message(self) -> str:
        """What the page says about keeping the mappers it makes."""
        if self.kind == "volume":
            return f"They are kept in {self.where}, for the next start."
        if self.kind == "hub":
            return f"Once made they are uploaded to {self.where}, for the next start."
        if self.kind == "space disk":
            return (
                "This Space's disk is lost at every restart: the next start calibrates again. "
                + HOW_TO_KEEP
            )
        return ""

    def keep(self, path: str | Path, fingerprints: Mapping[str, str]) -> str:
        """After calibration: upload to the repo (``hub``); returns a line for the page/log.
        A failed upload is reported, never raised: the mappers are in use either way."""
        if self.kind != "hub":
            return self.message
        from ..training.hub import upload_calibrated_mappers

        try:
            url = upload_calibrated_mappers(path, self.where, dict(fingerprints), token=self.token)
        except Exception as exc:  # network, token, permissions: the page says what happened
            logger.exception("uploading the mappers to %s failed", self.where)
            return (
                f"Uploading them to {self.where} failed ({type(exc).__name__}: {exc}): the next "
                "restart calibrates again."
            )
        logger.info("mappers uploaded to %s", url)
        return f"They were uploaded to {self.where}: the next start loads them from there."


def mapper_storage(environ: Mapping[str, str] | None = None) -> MapperStorage:
    """Where this process keeps the mappers it calibrates (module doc)."""
    env = os.environ if environ is None else environ
    if env.get("CSLA_CACHE"):
        return MapperStorage("volume", str(mappers_cache_dir()))
    repo, token = env.get("CSLA_MAPPERS_REPO", "").strip(), env.get("HF_TOKEN", "").strip()
    space = env.get("SPACE_ID", "").strip()
    if repo and token:
        if space and repo.removeprefix("spaces/") == space:
            logger.warning(
                "CSLA_MAPPERS_REPO is this Space's own repository: not used (a commit to it "
                "restarts the Space)"
            )
        else:
            return MapperStorage("hub", repo, token)
    if space:
        return MapperStorage("space disk", str(mappers_cache_dir()))
    return MapperStorage("user cache", str(mappers_cache_dir()))
