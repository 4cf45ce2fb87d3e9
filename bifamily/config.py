"""Config building blocks: documented fields, a strict cattrs converter and readable error messages.

Every component owns a frozen attrs config class whose fields are declared with :func:`option`, so
each field carries the help text the recipe reference is rendered from. Structuring is strict: unknown
keys are rejected, ``1.7`` never becomes an int and ``"no"`` never becomes a bool.
"""

from __future__ import annotations

import re
import typing
from typing import Any, Callable

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from bifamily.errors import RecipeError

_MISSING = attrs.NOTHING


def option(default: Any = _MISSING, *, help: str, validator: Any = None, **kwargs: Any) -> Any:
    """An attrs field with a help text (rendered into the recipe reference) and optional validator."""
    metadata = {"help": help}
    if default is _MISSING:
        return attrs.field(validator=validator, metadata=metadata, **kwargs)
    return attrs.field(default=default, validator=validator, metadata=metadata, **kwargs)


class InvalidValue(ValueError):
    """Raised by field validators; carries the field name so errors read ``$.section.field: ...``."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def check(predicate: Callable[[Any], bool], message: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    """An attrs validator from a predicate; ``message`` may use ``{value}``."""

    def validate(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and not predicate(value):
            raise InvalidValue(attribute.name, message.format(value=repr(value)))

    return validate


positive = check(lambda v: v > 0, "must be > 0, got {value}")
non_negative = check(lambda v: v >= 0, "must be >= 0, got {value}")


def one_of(*choices: Any) -> Callable[[Any, attrs.Attribute, Any], None]:
    return check(lambda v: v in choices, f"must be one of {', '.join(map(repr, choices))}, got {{value}}")


SAFE_NAME_RULE = "letters, digits, '.', '_' and '-', not starting with '.', at most 100 characters"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def is_safe_name(name: Any) -> bool:
    """Whether ``name`` can be one path component as it is: no separators, no '..', no hidden file."""
    return isinstance(name, str) and _SAFE_NAME.fullmatch(name) is not None


def safe_name(text: str) -> str:
    """``text`` made a safe name: runs of other characters become '-', leading dots go."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).lstrip(".")[:100] or "run"


DEVICE_NAMES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def is_device_name(name: Any) -> bool:
    """Whether ``name`` is one of :data:`DEVICE_NAMES` (N a GPU index)."""
    return isinstance(name, str) and re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,6})?", name) is not None


device_name = check(is_device_name, f"must be {DEVICE_NAMES}, got {{value}}")


def in_range(low: float, high: float) -> Callable[[Any, attrs.Attribute, Any], None]:
    return check(lambda v: low <= v <= high, f"must be in [{low}, {high}], got {{value}}")


class _TypeMismatch(TypeError):
    def __init__(self, expected: str, value: Any):
        super().__init__(f"expected {expected}, got {type(value).__name__} {value!r}")


def _strict_int(value: Any, _type: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _TypeMismatch("int", value)
    return value


def _strict_float(value: Any, _type: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _TypeMismatch("float", value)
    return float(value)


def _strict_bool(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise _TypeMismatch("bool (true or false)", value)
    return value


def _strict_str(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise _TypeMismatch("string", value)
    return value


def _is_array(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (tuple, list)


def _strict_array(converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """TOML arrays for tuple/list fields: a scalar is a type error, not an iteration failure."""

    def structure(value: Any, annotation: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _TypeMismatch(f"an array ({type_name(annotation)})", value)
        item = typing.get_args(annotation)[0]
        structured, errors = [], []
        for index, element in enumerate(value):
            try:
                structured.append(converter.structure(element, item))
            except Exception as exc:
                exc.__notes__ = [*getattr(exc, "__notes__", []), IterableValidationNote(f"@ index {index}", index, item)]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"while structuring {type_name(annotation)}", errors, annotation)
        return typing.get_origin(annotation)(structured)

    return structure


def type_name(annotation: Any) -> str:
    """A recipe author's name for a field type: int, float, bool, str, array of int, ..."""
    if _is_array(annotation):
        return f"array of {type_name(typing.get_args(annotation)[0])}"
    return getattr(annotation, "__name__", str(annotation))


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook_func(_is_array, _strict_array(converter))
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(str, _strict_str)
    return converter


converter = make_converter()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unknown key(s): {', '.join(sorted(exc.extra_fields))}"
    text = str(exc) or type(exc).__name__
    return text.split(" @ ")[0]


def error_lines(exc: BaseException, path: str) -> list[str]:
    """Flatten a cattrs/attrs structuring error into ``$.key.path: message`` lines."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return [f"{path}.{key}: unknown key" for key in sorted(exc.extra_fields)]
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, without = exc.group_exceptions()
        lines = []
        for inner, note in with_notes:
            name = getattr(note, "name", None)
            index = getattr(note, "index", None)
            if name is not None:
                child = f"{path}.{name}"
            elif index is not None:
                child = f"{path}[{index!r}]"
            else:
                child = path
            lines.extend(error_lines(inner, child))
        for inner in without:
            lines.extend(error_lines(inner, path))
        return lines
    if isinstance(exc, InvalidValue):
        return [f"{path}.{exc.field}: {exc}"]
    if isinstance(exc, BaseExceptionGroup):
        return [line for inner in exc.exceptions for line in error_lines(inner, path)]
    return [f"{path}: {_describe(exc)}"]


def structure(data: Any, cls: type, path: str) -> Any:
    """Structure ``data`` into ``cls``; raise :class:`RecipeError` listing every problem with its path."""
    if not isinstance(data, dict):
        raise RecipeError([f"{path}: expected a table, got {type(data).__name__} {data!r}"])
    try:
        return converter.structure(data, cls)
    except Exception as exc:  # cattrs raises exception groups, attrs validators raise anything
        raise RecipeError(error_lines(exc, path)) from None


def unstructure(config: Any) -> Any:
    return converter.unstructure(config)


def field_docs(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type name, default or None, help) for each field of an attrs config class."""
    hints = typing.get_type_hints(cls)
    rows = []
    for field in attrs.fields(cls):
        default = None if field.default is attrs.NOTHING else field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if isinstance(default, tuple):  # shown as the TOML array a recipe writes
            default = list(default)
        rows.append((field.name, type_name(hints.get(field.name)), default, field.metadata.get("help", "")))
    return rows
