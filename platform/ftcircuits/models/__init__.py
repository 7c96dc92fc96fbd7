"""Models: one loader, the tiny offline family, known shapes, architecture adapters."""

from ftcircuits.models.architecture import Architecture, UnsupportedArchitectureError, describe_architecture
from ftcircuits.models.loader import LoadedModel, ModelSourceError, load_model, resolve_model_source

__all__ = [
    "Architecture",
    "LoadedModel",
    "ModelSourceError",
    "UnsupportedArchitectureError",
    "describe_architecture",
    "load_model",
    "resolve_model_source",
]
