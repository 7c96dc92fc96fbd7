"""A model source as a config type: checked before any work, never loaded by the check."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from ftcircuits.models.loader import ModelSourceError, resolve_model_source


def _checked_model(source: str) -> str:
    try:
        resolve_model_source(source)
    except ModelSourceError as error:
        raise ValueError(str(error)) from None
    return source


ModelSource = Annotated[str, AfterValidator(_checked_model)]
"""A model source ("tiny", a model directory, ``shape:NAME`` or a hub id), checked before any work."""
