"""Configuration: one frozen dataclass per component, built once from arguments, then
`RUNWIRE_*` environment variables, then defaults. Unknown keys are rejected and all errors are
reported together. Fields marked secret never appear in repr or errors."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from runwire.proto.auth import parse_tokens

T = TypeVar("T")


class ConfigError(ValueError):
    """Every problem found in one configuration, one per line."""


def secret(default: Any = "", default_factory: Any = None) -> Any:
    """A field that holds a secret (token, password): hidden from repr and messages."""
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, repr=False, metadata={"secret": True})
    return dataclasses.field(default=default, repr=False, metadata={"secret": True})


def _convert(raw: str, annotation: str) -> Any:
    kind = annotation.replace(" ", "").replace("|None", "").replace("Optional[", "").rstrip("]")
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind.startswith("dict"):
        return parse_tokens(raw)  # "project=token,other=token2": the one parser of such maps
    return raw


def _annotation(tp: Any) -> str:
    return tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))


def build(cls: type[T], overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
          prefix: str = "RUNWIRE_") -> T:
    """An instance of the dataclass `cls`: overrides (None means unset), then env, then defaults."""
    env = os.environ if env is None else env
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    errors = [f"unknown setting {key!r}" for key in overrides if key not in fields]
    values: dict[str, Any] = {}
    for name, field in fields.items():
        env_name = prefix + name.upper()
        if name in overrides:
            values[name] = overrides[name]
        elif env_name in env:
            try:
                values[name] = _convert(env[env_name], _annotation(field.type))
            except ValueError as exc:
                if field.metadata.get("secret"):
                    # The conversion's message quotes the bad text (int(), the bool parser).
                    errors.append(f"{env_name}=***: not a valid {_annotation(field.type)}")
                else:
                    errors.append(f"{env_name}={env[env_name]!r}: {exc}")
    try:
        instance = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError("; ".join(errors + [str(exc)])) from None
    # Range checks run even when other settings were bad, so every error is reported at once.
    check = getattr(instance, "problems", None)
    if check is not None:
        errors.extend(check())
    if errors:
        raise ConfigError("; ".join(errors))
    return instance
