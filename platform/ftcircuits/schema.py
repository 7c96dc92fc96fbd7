"""The base of every settings and config schema (a leaf: imports only pydantic)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A config section: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
