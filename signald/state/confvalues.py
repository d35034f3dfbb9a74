"""How :mod:`signald.config` turns what its sources give into typed values: the cattrs converter.

A TOML file gives typed values, an environment variable text, and
:meth:`~signald.config.Config.replace` either: ``"yes"`` is a boolean, ``"50"`` a number, ``"a, b"``
a list. Nothing is coerced beyond that: ``10.5`` is no integer, ``true`` no number, and a choice is
case-sensitive.

Error handling: a value that does not fit raises :class:`ValueError` with a message saying what was
expected and what came (``expected a number, got 'fast'``); the configuration names the key.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import cattrs

__all__ = ["converter"]

converter = cattrs.Converter(forbid_extra_keys=True)


def _structure_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _structure_number(kind: type) -> Any:
    def structure(value: Any, _: type) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        if kind is int and isinstance(value, float) and value != number:
            raise ValueError(f"expected an integer, got {value!r}")
        return number
    return structure


def _structure_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _structure_str_tuple(value: Any, _: type) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"expected a list of strings, got {value!r}")


def _structure_literal(value: Any, type_: Any) -> Any:
    if value not in typing.get_args(type_):
        raise ValueError(f"expected one of {', '.join(map(repr, typing.get_args(type_)))}, got {value!r}")
    return value


def _is_literal(type_: Any) -> bool:
    origin: Any = typing.get_origin(type_)
    return bool(origin is Literal)


converter.register_structure_hook_func(_is_literal, _structure_literal)
converter.register_structure_hook(bool, _structure_bool)
converter.register_structure_hook(int, _structure_number(int))
converter.register_structure_hook(float, _structure_number(float))
converter.register_structure_hook(str, _structure_str)
converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _structure_str_tuple)
