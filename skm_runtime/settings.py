"""Settings from `SKM_*` environment variables, loaded once into frozen dataclasses.

Each service declares one frozen dataclass; `load_settings` reads `SKM_<PREFIX>_<FIELD>` for
every field, converts it to the field's type and reports every bad value at once, naming
the variable, what it expected and what it got. Supported field types: str, int, float,
bool, pathlib.Path, enum.Enum subclasses, and tuple[str, ...] (comma-separated).

Field metadata may carry `min`/`max` bounds for numbers, `secret=True` for values that
must never be echoed back in an error message, and `env` to read another variable than
the field's own.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """One or more SKM_* variables hold values that cannot be used."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))
        self.problems = problems


def env_name(prefix: str, field_name: str) -> str:
    """The variable a field is read from: `SKM_<PREFIX>_<FIELD>` (prefix may be empty)."""
    parts = ["SKM", prefix.upper(), field_name.upper()] if prefix else ["SKM", field_name.upper()]
    return "_".join(parts)


def load_settings(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None) -> T:
    """Build `cls` from the environment; raise `SettingsError` listing every bad variable."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field in dataclasses.fields(cls):
        name = field_env_name(field, prefix)
        raw = env.get(name)
        if raw is None:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                problems.append(f"{name}: required, not set")
            continue
        try:
            value = _convert(raw.strip(), hints[field.name])
            _check_field(value, field.metadata)
        except ValueError as exc:
            shown = "<secret>" if field.metadata.get("secret") else repr(raw)
            problems.append(f"{name}: {exc}, got {shown}")
            continue
        values[field.name] = value
    if problems:
        raise SettingsError(problems)
    return cls(**values)


def field_env_name(field: dataclasses.Field[Any], prefix: str) -> str:
    """The variable one field is read from (fields may name another service's variable)."""
    return str(field.metadata.get("env") or env_name(prefix, field.name))


def parse_address(value: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 in brackets) and check the port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError("expected host:port")
    port = int(port_text) if port_text.isdigit() else -1
    if not 0 <= port <= 65535:
        raise ValueError("expected a port 0-65535")
    return host.strip("[]"), port


def _convert(raw: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if raw == "":
            return None
        return _convert(raw, options[0])
    if origin is tuple:
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if kind is bool:
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("expected true or false")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
    if kind is Path:
        if not raw:
            raise ValueError("expected a path")
        return Path(raw)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        allowed = [member.value for member in kind]
        for member in kind:
            if str(member.value) == raw.lower():
                return member
        raise ValueError(f"expected one of {', '.join(map(str, allowed))}")
    if kind is str:
        return raw
    raise TypeError(f"unsupported settings type {kind!r}")


def _check_field(value: Any, metadata: Mapping[str, Any]) -> None:
    if metadata.get("address"):
        parse_address(value)
    low, high = metadata.get("min"), metadata.get("max")
    if low is not None and value < low:
        raise ValueError(f"expected at least {low}")
    if high is not None and value > high:
        raise ValueError(f"expected at most {high}")


def bounded(default: Any, *, low: float | None = None, high: float | None = None) -> Any:
    """A dataclass field with a default and numeric bounds checked at load time."""
    return dataclasses.field(default=default, metadata={"min": low, "max": high})


def address(default: str, *, env: str = "") -> Any:
    """A `host:port` field, checked when set from the environment.

    `env` names the variable when it is not the field's own, e.g. a client of the
    conversation service reads SKM_CONVERSATION_ADDR, the address that service binds.
    """
    return dataclasses.field(default=default, metadata={"address": True, "env": env})


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceSettings:
    """What every service reads under its own prefix: SKM_<NAME>_ADDR and _METRICS_ADDR.

    Services extend it with their own fields (a frozen dataclass with defaults).
    """

    addr: str = address("127.0.0.1:0")
    # Prometheus /metrics endpoint; empty = not served.
    metrics_addr: str = ""
