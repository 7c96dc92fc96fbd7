"""The one config loader: a YAML file (or defaults) with dotted ``key.path=value`` overrides.

Every error (unknown field, wrong type, unknown task, bad range, unreadable
model path) is raised as one ConfigError naming the field, before any work.
Run paths (``out`` and the runs a job reads) are resolved against the storage
root here (``ftcircuits.storage``), so every job and every preset loaded by
path stores its runs in the same place.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from ftcircuits.storage import StorageError, resolve_out, resolve_run_path


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field."""


Schema = TypeVar("Schema", bound=BaseModel)

RUN_PATH_FIELDS = ("out", "run", "reference_run", "reference_runs", "data")
"""Top-level fields that name a run's directory (written or read), stored under ``FTCIRCUITS_STORAGE``."""


def schema_defaults(schema: type[BaseModel]) -> dict:
    """Return the JSON-like defaults of ``schema``'s fields that have one."""
    out = {}
    for name, field in schema.model_fields.items():
        if not field.is_required():
            out[name] = to_jsonable_python(field.get_default(call_default_factory=True, validated_data={}))
    return out


def apply_override(tree: dict, assignment: str, defaults: dict | None = None) -> dict:
    """Return ``tree`` with ``a.b.c=value`` set; the value is parsed as YAML (numbers, lists, ...).

    A section the tree lacks is first filled from ``defaults``, so
    ``finetune_task.range=200`` keeps the default task's other fields.
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key.path=value")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {assignment!r} has an empty key")
    node, default = tree, defaults or {}
    for key in keys[:-1]:
        default = default.get(key, {}) if isinstance(default, dict) else {}
        child = node.setdefault(key, dict(default) if isinstance(default, dict) else {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw)
    return tree


def _section_schema(annotation) -> type[BaseModel] | None:
    """Return the schema of a field that is a section (a model, or a model or None), else None."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def with_section_defaults(schema: type[BaseModel], tree: dict, defaults: dict) -> dict:
    """Return ``tree`` with every section it gives in part completed from that field's default, at every
    depth: ``circuits: {discovery: {examples: 64}}`` keeps the default circuits' other fields, not the
    section class's own defaults."""
    out = dict(tree)
    for name, value in tree.items():
        field = schema.model_fields.get(name)
        section = _section_schema(field.annotation) if field is not None else None
        default = defaults.get(name)
        if section is not None and isinstance(value, dict) and isinstance(default, dict):
            out[name] = {**default, **with_section_defaults(section, value, default)}
    return out


def field_paths(
    schema: type[BaseModel], name: str, prefix: str = "", within: tuple[type, ...] = ()
) -> list[str]:
    """Return the dotted path of every field called ``name`` in ``schema`` and its sections, at any depth
    (``AnalysisConfig``, ``explorer``: ``["analysis.explorer"]``); a section within itself is not entered."""
    paths = []
    for field_name, field in schema.model_fields.items():
        if field_name == name:
            paths.append(prefix + field_name)
        section = _section_schema(field.annotation)
        if section is not None and section not in (*within, schema):
            paths += field_paths(section, name, f"{prefix}{field_name}.", (*within, schema))
    return paths


def _section_at(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """Return the section schema at ``loc`` (field names from ``schema``), or None where it is not one."""
    for part in loc:
        field = schema.model_fields.get(str(part))
        schema = _section_schema(field.annotation) if field is not None else None
        if schema is None:
            return None
    return schema


def describe_validation_error(error: ValidationError, schema: type[BaseModel] | None = None) -> str:
    """Return one message naming every bad field and why; an unknown field that ``schema`` has in one of
    its sections names where (``explorer: unknown field; did you mean analysis.explorer?``)."""
    lines = []
    for issue in error.errors():
        where = ".".join(str(p) for p in issue["loc"]) or "(top level)"
        message = issue["msg"].removeprefix("Value error, ")
        if issue["type"] == "extra_forbidden":
            message = "unknown field"
            parent = _section_at(schema, issue["loc"][:-1]) if schema is not None else None
            if parent is not None:
                prefix = "".join(f"{part}." for part in issue["loc"][:-1])
                found = [prefix + path for path in field_paths(parent, str(issue["loc"][-1]))]
                if found:
                    message += f"; did you mean {' or '.join(found)}?"
        lines.append(f"{where}: {message}")
    return "invalid config: " + "; ".join(lines)


def _stored(name: str, value):
    if isinstance(value, dict):
        return {key: _stored(name, item) for key, item in value.items()}
    if not isinstance(value, str | Path):
        return value  # not a path: validation names the field
    return str(resolve_out(value, name) if name == "out" else resolve_run_path(value))


def resolve_run_paths(schema: type[BaseModel], tree: dict, defaults: dict) -> dict:
    """Return ``tree`` with the schema's run paths (given or default) resolved by ``ftcircuits.storage``;
    raise ConfigError for a relative ``out`` that would be lost with a Ray job's working directory."""
    resolved = dict(tree)
    for name in RUN_PATH_FIELDS:
        value = tree.get(name, defaults.get(name))
        if name not in schema.model_fields or value is None:
            continue
        try:
            stored = _stored(name, value)
        except StorageError as error:
            raise ConfigError(str(error)) from None
        if stored != value:
            resolved[name] = stored
    return resolved


def merged_tree(tree: dict, *updates: dict) -> dict:
    """Return ``tree`` with each of ``updates`` (partial trees) merged in, deepest keys winning in turn."""
    out = dict(tree)
    for update in updates:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged_tree(out[key], value)
            else:
                out[key] = value
    return out


def updated_config(config: Schema, *updates: dict, what: str = "config") -> Schema:
    """Return ``config`` with partial trees merged in (``{"train": {"lr": 0.01}}``), validated again; raise
    ConfigError naming ``what`` and the bad field."""
    try:
        return type(config).model_validate(merged_tree(config.model_dump(mode="json"), *updates))
    except ValidationError as error:
        raise ConfigError(f"{what}: {describe_validation_error(error, type(config))}") from None


def load_config(schema: type[Schema], path: Path | None = None, overrides: list[str] = ()) -> Schema:
    """Load ``schema`` from a YAML file (or defaults) with dotted overrides; raise ConfigError."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at top level")
    defaults = schema_defaults(schema)
    for assignment in overrides:
        tree = apply_override(tree, assignment, defaults)
    tree = with_section_defaults(schema, tree, defaults)
    tree = resolve_run_paths(schema, tree, defaults)
    try:
        return schema.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, schema)) from None
