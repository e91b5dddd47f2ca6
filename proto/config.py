"""Configuration: one frozen dataclass per component, built once from arguments, then
`RUNWIRE_*` environment variables, then defaults. Unknown keys are rejected and all errors are
reported together. Fields marked secret never appear in repr or errors."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from runwire.proto.auth import parse_tokens

T = TypeVar("T")


# One exit-code policy for every `runwire` command (documented in `runwire --help`).
EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime or connection failure: the server is down, the write failed
EXIT_USAGE = 2    # the command cannot work as given: bad arguments, settings, filter or run id

# RUNWIRE_* variables that are read directly, not through a settings dataclass.
OTHER_VARIABLES = frozenset({
    "RUNWIRE_RUN_ID", "RUNWIRE_HOST", "RUNWIRE_FAKE_NVML", "RUNWIRE_FAKE_GPUS", "RUNWIRE_TEST_INFRA",
    "RUNWIRE_REQUIRE_INFRA", "RUNWIRE_HOME", "RUNWIRE_TOKENS",
})
_known_settings: set[str] = set(OTHER_VARIABLES)  # grows with every settings class built
_warned: set[str] = set()
log = logging.getLogger("runwire")


class ConfigError(ValueError):
    """Every problem found in one configuration, one per line."""


class UsageError(Exception):
    """A command that cannot work as given (exit status EXIT_USAGE); the message says what to
    change."""


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
    _warn_near_misses(cls, {prefix + name.upper() for name in fields}, env, prefix)
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


def _warn_near_misses(cls: type, names: set[str], env: Mapping[str, str], prefix: str) -> None:
    """Warn (once per variable) about a RUNWIRE_* variable that no settings class knows and that
    looks like one of `cls`'s: RUNWIRE_GATEWY would otherwise silently leave the default."""
    _known_settings.update(names)
    for variable in env:
        if not variable.startswith(prefix) or variable in _known_settings or variable in _warned:
            continue
        close = difflib.get_close_matches(variable, sorted(names), n=1, cutoff=0.8)
        if close:
            _warned.add(variable)
            log.warning("runwire: %s is not one of the %s settings and is ignored here; did you mean %s?",
                        variable, cls.__name__, close[0])
