"""The editing service the app and the API call: one request's input cleaning, the per-session
cache, media helpers and ``EditingService`` (no UI code here)."""

from .session import (
    AUTO_STRENGTH,
    NO_PHOTO_MESSAGE,
    SESSION_TTL_S,
    CachedInversion,
    EditingService,
    InvalidSettingError,
    NoPhotoError,
    SessionCache,
    annotate_faces,
    clean_prompt,
    compare_pair,
    content_hash,
    free_cached_memory,
    is_out_of_memory,
    session_cache,
    write_gif,
)

__all__ = [
    "AUTO_STRENGTH",
    "NO_PHOTO_MESSAGE",
    "SESSION_TTL_S",
    "CachedInversion",
    "EditingService",
    "InvalidSettingError",
    "NoPhotoError",
    "SessionCache",
    "annotate_faces",
    "clean_prompt",
    "compare_pair",
    "content_hash",
    "free_cached_memory",
    "is_out_of_memory",
    "session_cache",
    "write_gif",
]
