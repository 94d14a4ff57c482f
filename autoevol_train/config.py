"""Typed configs loaded from YAML, with errors that name the file and the key path.

Every stage defines its config as a pydantic model deriving from `StrictModel` next to the code that uses
it; this module only knows how to load, override, validate and dump them. Unknown keys and wrong types fail
on load (never at step 900 of a run), in one line: ``evolve.yaml: llm.evol.max_concurrency: expected int,
got 'many'``.
"""

from __future__ import annotations

import difflib
from collections import Counter
import textwrap
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import to_jsonable_python

from autoevol_train.errors import ConfigError, InputError

__all__ = ["InputError", "ConfigError", "StrictModel", "read_yaml", "load_config", "apply_overrides", "dump_config", "parse_config",
           "commented_yaml"]


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
    if kind == "value_error":  # a model's own check: its message says it all
        return error["msg"].removeprefix("Value error, ")
    for prefix, name in _EXPECTED.items():
        if kind.startswith(prefix + "_") or kind == prefix + "_type":
            return f"expected {name}, got {error['input']!r}"
    return f"{error['msg']} (got {error['input']!r})"


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a (possibly Optional / Annotated) union annotation, or the annotation itself."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is UnionType:
        return [member for arg in get_args(annotation) for member in _members(arg) if member is not type(None)]
    return [annotation]


def _tags(member: Any) -> set[str]:
    """The names pydantic puts in an error's location for one alternative of a union: the class name, or the
    value of a Literal discriminator field."""
    if not (isinstance(member, type) and issubclass(member, BaseModel)):
        return {getattr(member, "__name__", str(member))}
    tags = {member.__name__}
    for field in member.model_fields.values():
        if get_origin(field.annotation) is Literal and len(get_args(field.annotation)) == 1:
            tags.add(str(get_args(field.annotation)[0]))
    return tags


def _walk(cls: type[BaseModel], loc: tuple[Any, ...]
          ) -> tuple[list[Any], list[tuple[tuple[Any, ...], str]], list[Any]]:
    """Follow an error location through the models: the location as the user wrote it (union alternatives
    left out), the union branch it went through (to group alternatives), and the annotations at its end."""
    shown: list[Any] = []
    branch: list[tuple[tuple[Any, ...], str]] = []  # (where, which alternative) for each union passed
    current: list[Any] = [cls]
    for item in loc:
        options = [m for a in current for m in _members(a)]
        models = [m for m in options if isinstance(m, type) and issubclass(m, BaseModel)]
        if isinstance(item, str) and any(item in m.model_fields for m in models):
            current = [m.model_fields[item].annotation for m in models if item in m.model_fields]
        elif len(options) > 1 and isinstance(item, str) and any(item in _tags(m) for m in options):
            branch.append((tuple(shown), item))
            current = [m for m in options if item in _tags(m)]
            continue
        else:  # a list index or a mapping key: step into the element type
            current = [get_args(a)[-1] for a in options if get_origin(a) in (list, dict, tuple) and get_args(a)]
        shown.append(item)
    return shown, branch, current


def _key_path(loc: Any) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts:
            parts.append(f".{item}")
        else:
            parts.append(str(item))
    return "".join(parts) or "<root>"


def _problems(cls: type[BaseModel], errors: list[dict[str, Any]]) -> list[str]:
    """One line per problem: `key.path: what is wrong`, unknown keys with the closest valid key.

    A misspelt required key is one problem, not two: `seedz` says "did you mean seeds?" and the missing
    `seeds` is not reported again. Of a union's alternatives only the one that fits best is reported."""
    walked = [(error, *_walk(cls, tuple(error["loc"]))) for error in errors]
    errors_per_alternative = Counter(pair for _, _, branch, _ in walked for pair in branch)
    best: dict[tuple[Any, ...], str] = {}
    for (where, alternative), _ in sorted(errors_per_alternative.items(), key=lambda item: item[1]):
        best.setdefault(where, alternative)
    walked = [w for w in walked if all(best[where] == alternative for where, alternative in w[2])]

    missing = {tuple(shown) for error, shown, _, _ in walked if error["type"] == "missing"}
    suggested: set[tuple[Any, ...]] = set()
    lines: list[tuple[tuple[Any, ...], str, str]] = []
    for error, shown, _, _ in walked:
        problem = _describe(error)
        if error["type"] == "extra_forbidden":
            parent = _walk(cls, tuple(error["loc"])[:-1])[2]
            names = [n for m in parent for m in _members(m) if isinstance(m, type) and issubclass(m, BaseModel)
                     for n in m.model_fields]
            absent = [n for n in names if (*shown[:-1], n) in missing]  # a missing key is the likelier meaning
            match = (difflib.get_close_matches(str(shown[-1]), absent, n=1, cutoff=0.6)
                     or difflib.get_close_matches(str(shown[-1]), names, n=1, cutoff=0.6))
            if match:
                problem += f" (did you mean {match[0]}?)"
                suggested.add((*shown[:-1], match[0]))
        lines.append((tuple(shown), error["type"], f"{_key_path(shown)}: {problem}" if shown else problem))
    return list(dict.fromkeys(line for key, kind, line in lines if not (kind == "missing" and key in suggested)))


def parse_config(cls: type[T], data: Any, source: str, config_dir: Path | None = None) -> T:
    """Validate a plain mapping as `cls`; `source` (a file name) prefixes every problem, one per line.
    `config_dir` (the file's folder) reaches validators as `info.context`: a pipeline's `file:` references are
    relative to it."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return cls.model_validate(data, context={"config_dir": config_dir or Path(".")})
    except ValidationError as exc:
        problems = _problems(cls, exc.errors(include_url=False))
        raise ConfigError("\n".join(f"{source}: {problem}" for problem in problems)) from None


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


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file that holds a mapping (a config, a recipe), or one line naming the file and what is wrong:
    missing, not UTF-8, a syntax error (line, column and the parser's message), not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path.name}: not UTF-8 text (byte offset {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Read a YAML file, apply command-line overrides, validate as `cls`."""
    path = Path(path)
    data = read_yaml(path)
    apply_overrides(data, list(overrides), path.name)
    return parse_config(cls, data, path.name, path.parent)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's own description, at the line and column where it noticed the problem, and where the
    construct it was reading started (an unclosed bracket is noticed one line after it)."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return f"invalid YAML: {str(exc).splitlines()[0]}"
    mark = exc.problem_mark
    text = f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    if exc.context and exc.context_mark is not None and exc.context_mark.line != mark.line:
        text += f" ({exc.context} started at line {exc.context_mark.line + 1})"
    elif exc.context:
        text += f" ({exc.context})"
    return text


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (what a run directory stores; configs never hold secrets, only env names)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def commented_yaml(cls: type[BaseModel]) -> str:
    """Every key of `cls` as commented YAML a user can start from (`autoevol config STAGE`).

    Each key comes with its description (and its choices) from the model. Keys that have a default are
    written commented out with that default, so the file as printed means exactly the defaults; only the
    required keys are live, with the value `null` until the user fills them in. Optional sections (off by
    default) are commented out whole.
    """
    lines: list[str] = []
    if cls.__doc__:
        lines += [f"# {line}" for line in textwrap.wrap(" ".join(cls.__doc__.split()), 110)]
    _emit_fields(cls, None, 0, False, lines)
    return "\n".join(lines) + "\n"


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, list[str]]:
    """The model a field holds (the first alternative of a union of models), and the names of all of them
    (a discriminated union's tag values, e.g. the backends of a role)."""
    models = [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
    return (models[0] if models else None), [min(_tags(m) - {m.__name__}, default=m.__name__) for m in models]


def _has_required_leaf(model: type[BaseModel]) -> bool:
    return any(field.is_required() for field in model.model_fields.values())


def _yaml_value(value: Any) -> str:
    """One value in YAML flow style, on one line (PyYAML-safe: floats keep their dot, strings their quotes)."""
    dumped = yaml.safe_dump([to_jsonable_python(value)], default_flow_style=True, width=10**9, allow_unicode=True)
    return dumped.strip()[1:-1]


def _emit_fields(model: type[BaseModel], values: dict[str, Any] | None, depth: int, commented: bool,
                 lines: list[str]) -> None:
    pad = "  " * depth
    for name, field in model.model_fields.items():
        notes = [" ".join(field.description.split())] if field.description else []
        choices = [a for m in _members(field.annotation) if get_origin(m) is Literal for a in get_args(m)]
        if len(choices) > 1:
            notes.append("one of: " + ", ".join(map(str, choices)))
        submodel, shapes = _model_of(field.annotation)
        if len(shapes) > 1:
            notes.append(f"one of: {', '.join(shapes)} (shown: {shapes[0]}; the others take other keys)")
        if submodel is None and get_origin(field.annotation) is list:
            item_model, _ = _model_of(get_args(field.annotation)[0]) if get_args(field.annotation) else (None, [])
            if item_model is not None:
                notes.append("each item: " + "; ".join(
                    f"{key}: {' '.join((sub.description or '').split())}".rstrip(": ")
                    for key, sub in item_model.model_fields.items()))
        for note in notes:
            lines += [f"{pad}# {line}" for line in textwrap.wrap(note, 110 - len(pad))]
        required = "  # required" if field.is_required() and values is None else ""
        if values is not None:
            value = values.get(name)
        elif field.is_required():
            value = None
        else:
            value = field.get_default(call_default_factory=True)
        if submodel is not None and (isinstance(value, BaseModel) or (value is None and field.is_required())):
            live = not commented and field.is_required() and _has_required_leaf(submodel)
            section_values = value.model_dump() if isinstance(value, BaseModel) else None
            lines.append(f"{pad}{'' if live else '# '}{name}:{required}")
            _emit_fields(type(value) if isinstance(value, BaseModel) else submodel, section_values, depth + 1,
                         not live, lines)
        elif submodel is not None and value is None:  # an optional section, off by default
            lines.append(f"{pad}# {name}:  # off by default; uncomment to use")
            _emit_fields(submodel, None, depth + 1, True, lines)
        elif field.is_required() and values is None:
            lines.append(f"{pad}{'# ' if commented else ''}{name}: null{required}")
        else:
            lines.append(f"{pad}# {name}: {_yaml_value(value)}")
