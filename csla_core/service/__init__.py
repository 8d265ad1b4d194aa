"""The editing service the app and the API call: one request's input cleaning (``request``),
the per-session cache (``cache``), pictures for the front end (``media``), background work that
steps aside for requests (``background``, ``preparation``) and ``EditingService``
(``session``). No UI code here."""

from ..editing.strength import AUTO as AUTO_STRENGTH
from ..errors import InvalidSettingError
from .background import Job, RefinementWorker, RequestGate
from .cache import (
    INVERSIONS_PER_SESSION,
    SESSION_TTL_S,
    CachedInversion,
    SessionCache,
    compare_pair,
    content_hash,
    session_cache,
)
from .media import (
    SWEEP_DIR_MAX_AGE_S,
    annotate_faces,
    caption,
    face_choices,
    sweep_strengths,
    write_gif,
)
from .preparation import MapperPreparation, PreparationStatus, SliceReport
from .request import (
    MAX_PROMPT_CHARS,
    NO_PHOTO_MESSAGE,
    EditRequest,
    NoPhotoError,
    clamp_int,
    clean_detail,
    clean_prompt,
    free_cached_memory,
    is_out_of_memory,
)
from .session import (
    MISSING_PIPELINE_MESSAGE,
    Analysis,
    EditingService,
    EditStep,
    RefineUpdate,
)
from .storage import MapperStorage, mapper_storage

__all__ = [
    "AUTO_STRENGTH",
    "INVERSIONS_PER_SESSION",
    "MAX_PROMPT_CHARS",
    "MISSING_PIPELINE_MESSAGE",
    "NO_PHOTO_MESSAGE",
    "SESSION_TTL_S",
    "SWEEP_DIR_MAX_AGE_S",
    "Analysis",
    "CachedInversion",
    "EditRequest",
    "EditStep",
    "EditingService",
    "InvalidSettingError",
    "Job",
    "MapperPreparation",
    "PreparationStatus",
    "NoPhotoError",
    "MapperStorage",
    "RefineUpdate",
    "SliceReport",
    "mapper_storage",
    "RefinementWorker",
    "RequestGate",
    "SessionCache",
    "annotate_faces",
    "caption",
    "clamp_int",
    "clean_detail",
    "clean_prompt",
    "compare_pair",
    "content_hash",
    "face_choices",
    "free_cached_memory",
    "is_out_of_memory",
    "session_cache",
    "sweep_strengths",
    "write_gif",
]
