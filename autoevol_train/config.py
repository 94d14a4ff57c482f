"""Typed configs loaded from YAML, with errors that name the file and the key path.

Every stage defines its config as a pydantic model deriving from `StrictModel` next to the code that uses
it; this module only knows how to load, override, validate and dump them. Unknown keys and wrong types fail
on load (never at step 900 of a run), in one line: ``evolve.yaml: llm.evol.max_concurrency: expected int,
got 'many'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from autoevol_train.errors import ConfigError, InputError

__all__ = ["InputError", "ConfigError", "StrictModel", "load_config", "apply_overrides", "dump_config", "parse_config"]


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


T = TypeVar("T", bound=BaseModel)

_EXPECTED = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "string": "str",
    "list": "list",
    "dict": "mapping",
    "model": "mapping",
}


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    for prefix, name in _EXPECTED.items():
        if kind.startswith(prefix + "_") or kind == prefix + "_type":
            return f"expected {name}, got {error['input']!r}"
    return f"{error['msg']} (got {error['input']!r})"


def _key_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts:
            parts.append(f".{item}")
        else:
            parts.append(str(item))
    return "".join(parts) or "<root>"


def parse_config(cls: type[T], data: Any, source: str) -> T:
    """Validate a plain mapping as `cls`; `source` (a file name) prefixes any error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {_key_path(first['loc'])}: {_describe(first)}{more}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested mapping, in place."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: override {override!r} is not of the form key.sub=value")
        *parents, leaf = key.split(".")
        node = data
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: override {key}: {'.'.join(parents[: i + 1])} is not a mapping")
            node = child
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return data


def load_config(cls: type[T], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Read a YAML file, apply command-line overrides, validate as `cls`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        marked = isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None
        where = f" at line {exc.problem_mark.line + 1}" if marked else ""
        raise ConfigError(f"{path.name}: invalid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: expected a mapping at the top level, got {type(data).__name__}")
    apply_overrides(data, list(overrides), path.name)
    return parse_config(cls, data, path.name)


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (what a run directory stores; configs never hold secrets, only env names)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
