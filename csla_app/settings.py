"""The first tab's edit controls as one value: the events pass them by name (``inputs_kwargs``),
so each handler names the settings once and the API keeps its parameter names."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from csla_core.service import AUTO_STRENGTH, EditRequest
from csla_core.service.request import Warn


@dataclass(frozen=True)
class EditSettings:
    """One value per control; the field names are the API's parameter names (``/edit_photo``).
    The defaults are the controls' initial values."""

    photo: str | None = None
    face_index: int | None = 0
    prompt: str | None = ""
    source_prompt: str | None = ""
    strength: float | str | None = 1.0
    auto: bool = False
    samples: int | None = 4
    diversity: float | None = 0.5
    seed: int | None = 0
    paste_mode: str = "photo"  # "photo": pasted back into the photo; "crop": the aligned crops
    detail: str | None = "keep"  # "keep": the photo's own pixels where the edit does not act

    @property
    def paste(self) -> bool:
        return self.paste_mode == "photo"

    def request(self, warn: Warn | None = None, **changes: Any) -> EditRequest:
        """These settings as the service's cleaned request (``changes``: fields replaced first,
        e.g. the sweep's strength)."""
        settings = replace(self, **changes) if changes else self
        return EditRequest.clean(
            settings.photo,
            settings.prompt,
            face_index=settings.face_index,
            source_prompt=settings.source_prompt,
            strength=AUTO_STRENGTH if settings.auto else settings.strength,
            samples=settings.samples,
            diversity=settings.diversity,
            seed=settings.seed,
            paste=settings.paste,
            detail=settings.detail,
            warn=warn,
        )

    @classmethod
    def inputs(cls, **components: Any) -> dict[str, Any]:
        """The event inputs (``inputs_kwargs``) that fill every field, in field order (the
        order of the API's parameters)."""
        names = [field.name for field in fields(cls)]
        if set(components) != set(names):
            raise TypeError(f"EditSettings.inputs needs exactly {names}, got {sorted(components)}")
        return {name: components[name] for name in names}
