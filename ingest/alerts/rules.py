"""Alert rules: the model, the built-in defaults and the rules-file loader (pure, no I/O but
reading the file).

A rules file (TOML; YAML too when PyYAML is importable) overrides the built-in rules and adds
custom ones, globally and per project::

    [rules.gpu_temperature_critical]       # override fields of a built-in rule
    threshold = 88
    for_s = "30s"

    [rules.gpu_power_at_limit]
    enabled = false

    [rules.slow_dataloader]                # a new rule: give its kind
    kind = "sql"
    severity = "warning"
    sql = '''
      SELECT project, run_id, rank, avg(value) AS value FROM metrics
      WHERE name = 'data_time_s' AND ts > {now:DateTime64(6, 'UTC')} - INTERVAL 5 MINUTE
      GROUP BY project, run_id, rank HAVING value > 2
    '''

    [projects.llm.rules.straggler]         # only for project "llm"
    threshold = 1.3

Every problem in a file is reported at once (`RulesError`), each naming the rule and the field,
e.g. ``projects.llm.rules.straggler.threshold: must be a number, got 'x'``.

Durations (``*_s`` fields) are seconds, or strings with a unit: ``"90s"``, ``"5m"``, ``"1h"``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from runwire.proto.config import ConfigError
from runwire.proto.contract import GPU_FLOAT_FIELDS

SEVERITIES = ("info", "warning", "critical")

# Kinds evaluated on the stream inside the ingest path, and those evaluated periodically in SQL.
STREAM_KINDS = ("gpu_threshold", "gpu_throttle", "gpu_counter_increase", "gpu_counter_rate", "gpu_event",
                "metric_nonfinite", "metric_threshold")
PERIODIC_KINDS = ("straggler", "heartbeat", "sql")
KINDS = STREAM_KINDS + PERIODIC_KINDS

# The per-sample GPU float fields of the contract plus the two derived fractions the built-in
# rules use.
GPU_DERIVED_FIELDS = {
    "memory_used_fraction": ("memory_used_bytes", "memory_total_bytes"),
    "power_fraction": ("power_w", "power_limit_w"),
}
GPU_THRESHOLD_FIELDS = GPU_FLOAT_FIELDS + tuple(GPU_DERIVED_FIELDS)
GPU_COUNTER_FIELDS = ("ecc_corrected", "ecc_uncorrected")
GPU_EVENT_FIELDS = ("xid",)

# NVML clocks-event reason bits (pynvml.nvmlClocksEventReason*; the same values as the older
# nvmlClocksThrottleReason* names). Copied so this module does not need pynvml.
THROTTLE_REASONS = {
    "gpu_idle": 0x1,                # nvmlClocksEventReasonGpuIdle
    "applications_clocks": 0x2,     # nvmlClocksEventReasonApplicationsClocksSetting
    "sw_power_cap": 0x4,            # nvmlClocksEventReasonSwPowerCap
    "hw_slowdown": 0x8,             # nvmlClocksEventReasonHwSlowdown
    "sync_boost": 0x10,             # nvmlClocksEventReasonSyncBoost
    "sw_thermal": 0x20,             # nvmlClocksEventReasonSwThermalSlowdown
    "hw_thermal": 0x40,             # nvmlClocksEventReasonHwThermalSlowdown
    "hw_power_brake": 0x80,         # nvmlClocksEventReasonHwPowerBrakeSlowdown
    "display_clock": 0x100,         # nvmlClocksEventReasonDisplayClockSetting
}
DEFAULT_THROTTLE_MASK = (THROTTLE_REASONS["sw_thermal"] | THROTTLE_REASONS["hw_thermal"]
                         | THROTTLE_REASONS["hw_power_brake"] | THROTTLE_REASONS["hw_slowdown"]
                         | THROTTLE_REASONS["sw_power_cap"])

OPS = (">=", ">", "<=", "<")
HEARTBEAT_SOURCES = ("metrics", "gpu")

# Query parameters a custom SQL rule may use ({name:Type}); the evaluator passes those it uses.
SQL_PARAMETERS = {"now": "DateTime64(6, 'UTC')", "now_us": "Int64", "project": "String"}
_SQL_PLACEHOLDER = re.compile(r"\{(\w+):([^}]+)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


class RulesError(ConfigError):
    """Every problem found in a rules file, one per line, each naming the rule and the field."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class Rule:
    """One alert rule. Which fields matter depends on `kind` (see KIND_FIELDS)."""

    name: str
    kind: str
    severity: str = "warning"
    enabled: bool = True
    description: str = ""
    for_s: float = 0.0            # the condition must hold this long before the alert fires
    clear_s: float = 0.0          # ... and be clear this long before a firing alert resolves
    renotify_s: float | None = None  # re-send a long-firing alert this often (None: engine default, 0: never)
    field: str = ""               # GPU column (or derived fraction) the rule reads
    op: str = ">="
    threshold: float = math.nan
    hysteresis: float = 0.0       # clear when the value is back past threshold -/+ hysteresis ...
    clear_threshold: float | None = None  # ... or past this value, when given
    mask: int = 0                 # gpu_throttle: NVML clocks-event reason bits
    exclude: tuple[int, ...] = ()  # gpu_event: codes that never alert
    metrics: tuple[str, ...] = ()  # metric_*: metric name globs (case-insensitive)
    metric: str = ""              # straggler: the step-time metric
    window_s: float = 60.0        # gpu_counter_rate, straggler: the window values are taken over
    min_ranks: int = 2            # straggler: ranks needed for a median
    max_silence_s: float = 86400.0  # heartbeat: runs silent longer than this are abandoned, not alerted
    sources: tuple[str, ...] = HEARTBEAT_SOURCES  # heartbeat: what counts as a sign of life
    sql: str = ""                 # sql: the query; every row it returns is a firing entity
    interval_s: float | None = None  # periodic kinds: evaluate this often (None: engine default)

    @property
    def stream(self) -> bool:
        return self.kind in STREAM_KINDS

    @property
    def effective_clear(self) -> float:
        """The value past which the condition counts as clear (hysteresis)."""
        if self.clear_threshold is not None:
            return self.clear_threshold
        if self.op in (">=", ">"):
            return self.threshold - self.hysteresis
        return self.threshold + self.hysteresis

    def condition_text(self) -> str:
        """What the rule checks, for messages and `runwire alerts rules`."""
        k = self.kind
        hold = f" for {fmt_duration(self.for_s)}" if self.for_s else ""
        if k in ("gpu_threshold", "metric_threshold"):
            subject = self.field if k == "gpu_threshold" else "|".join(self.metrics)
            return f"{subject} {self.op} {fmt_number(self.threshold)}{hold} (clear {fmt_number(self.effective_clear)})"
        if k == "gpu_throttle":
            return f"throttle reasons {'|'.join(mask_names(self.mask)) or hex(self.mask)}{hold}"
        if k == "gpu_counter_increase":
            return f"{self.field} increases by >= {fmt_number(self.threshold)}"
        if k == "gpu_counter_rate":
            return (f"{self.field} > {fmt_number(self.threshold)}/min over {fmt_duration(self.window_s)}{hold}"
                    f" (clear {fmt_number(self.effective_clear)}/min)")
        if k == "gpu_event":
            excluded = f" except {', '.join(map(str, self.exclude))}" if self.exclude else ""
            return f"{self.field} event{excluded}"
        if k == "metric_nonfinite":
            return f"NaN or Inf in {'|'.join(self.metrics)}"
        if k == "straggler":
            return (f"rank's mean {self.metric} over {fmt_duration(self.window_s)} >= {fmt_number(self.threshold)}x "
                    f"the run's median{hold} (clear {fmt_number(self.effective_clear)}x)")
        if k == "heartbeat":
            return f"RUNNING run silent >= {fmt_duration(self.threshold)} ({'+'.join(self.sources)})"
        return f"rows returned by SQL{hold}"


# Which fields each kind accepts in a rules file (beyond COMMON_FIELDS).
COMMON_FIELDS = ("kind", "severity", "enabled", "description", "renotify_s")
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "gpu_threshold": ("field", "op", "threshold", "hysteresis", "clear_threshold", "for_s", "clear_s"),
    "gpu_throttle": ("mask", "for_s", "clear_s"),
    "gpu_counter_increase": ("field", "threshold", "clear_s"),
    "gpu_counter_rate": ("field", "threshold", "hysteresis", "clear_threshold", "window_s", "for_s", "clear_s"),
    "gpu_event": ("field", "exclude", "clear_s"),
    "metric_nonfinite": ("metrics", "clear_s"),
    "metric_threshold": ("metrics", "op", "threshold", "hysteresis", "clear_threshold", "for_s", "clear_s"),
    "straggler": ("metric", "threshold", "hysteresis", "clear_threshold", "window_s", "min_ranks", "for_s",
                  "clear_s", "interval_s"),
    "heartbeat": ("threshold", "max_silence_s", "sources", "interval_s"),
    "sql": ("sql", "for_s", "clear_s", "interval_s"),
}

# The built-in rules (practitioners' defaults, e.g. SageMaker HyperPod's health checks).
BUILTIN_RULES: dict[str, dict[str, Any]] = {
    "gpu_temperature_critical": dict(
        kind="gpu_threshold", severity="critical", field="temperature_c", op=">=", threshold=85,
        hysteresis=3, for_s=60, clear_s=30, description="GPU at or above 85 C for a minute"),
    "gpu_temperature_warning": dict(
        kind="gpu_threshold", severity="warning", field="temperature_c", op=">=", threshold=80,
        hysteresis=3, for_s=300, clear_s=60, description="GPU at or above 80 C for 5 minutes"),
    "gpu_memory_near_oom": dict(
        kind="gpu_threshold", severity="warning", field="memory_used_fraction", op=">=", threshold=0.95,
        hysteresis=0.03, for_s=30, clear_s=30, description="GPU memory 95% full for 30 s: close to OOM"),
    "gpu_throttle": dict(
        kind="gpu_throttle", severity="warning", mask=DEFAULT_THROTTLE_MASK, for_s=60, clear_s=30,
        description="clocks held down by thermal, power or hardware slowdown for a minute"),
    "gpu_ecc_uncorrected": dict(
        kind="gpu_counter_increase", severity="critical", field="ecc_uncorrected", threshold=1, clear_s=900,
        description="an uncorrected (double-bit) ECC error"),
    "gpu_ecc_corrected_rate": dict(
        kind="gpu_counter_rate", severity="warning", field="ecc_corrected", threshold=10, hysteresis=5,
        window_s=60, clear_s=300, description="more than 10 corrected ECC errors a minute"),
    "gpu_xid": dict(
        kind="gpu_event", severity="critical", field="xid", clear_s=300,
        description="the driver reported an XID error"),
    "gpu_power_at_limit": dict(
        kind="gpu_threshold", severity="info", field="power_fraction", op=">=", threshold=0.98,
        hysteresis=0.03, for_s=300, clear_s=60, description="power draw pinned at the power limit for 5 minutes"),
    "loss_nonfinite": dict(
        kind="metric_nonfinite", severity="critical", metrics=("loss", "*loss*"), clear_s=60,
        description="NaN or Inf in a loss"),
    "straggler": dict(
        kind="straggler", severity="warning", metric="step_time_s", threshold=1.5, hysteresis=0.2,
        window_s=60, min_ranks=2, for_s=120, clear_s=60,
        description="a rank's step time 1.5x its run's median for 2 minutes"),
    "heartbeat": dict(
        kind="heartbeat", severity="warning", threshold=120, max_silence_s=86400,
        description="a RUNNING run that sent nothing for 2 minutes"),
}


# ------------------------------------------------------------------------------------------
# Formatting helpers


def fmt_number(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def fmt_duration(seconds: float) -> str:
    s = float(seconds)
    if s >= 3600 and s % 3600 == 0:
        return f"{int(s // 3600)} h"
    if s >= 60 and s % 60 == 0:
        return f"{int(s // 60)} min"
    return f"{fmt_number(s)} s"


def mask_names(mask: int) -> list[str]:
    return [name for name, bit in THROTTLE_REASONS.items() if mask & bit]


def metric_matcher(patterns: tuple[str, ...]):
    """A predicate on metric names: any glob matches, ignoring case."""
    compiled = re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns)) if patterns else None

    def match(name: str) -> bool:
        return compiled is not None and compiled.match(name.lower()) is not None

    return match


def sql_placeholders(sql: str) -> dict[str, str]:
    return {name: type_ for name, type_ in _SQL_PLACEHOLDER.findall(sql)}


# ------------------------------------------------------------------------------------------
# Parsing and validation


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h)?\s*$")
_UNIT = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def _number(value: Any, where: str, errors: _Errors, minimum: float | None = None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.add(where, f"must be a number, got {value!r}")
        return None
    out = float(value)
    if not math.isfinite(out):
        errors.add(where, f"must be finite, got {value!r}")
        return None
    if minimum is not None and out < minimum:
        errors.add(where, f"must be >= {fmt_number(minimum)}, got {value!r}")
        return None
    return out


def _duration(value: Any, where: str, errors: _Errors) -> float | None:
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            errors.add(where, f"must be seconds or a duration like '90s', '5m', '1h', got {value!r}")
            return None
        return float(m.group(1)) * _UNIT[m.group(2)]
    return _number(value, where, errors, minimum=0.0)


def _convert(name: str, value: Any, where: str, errors: _Errors) -> Any:
    """A rules-file value converted to the Rule field's type; None (and an error) when invalid."""
    if name in ("severity",):
        if value not in SEVERITIES:
            errors.add(where, f"must be one of {', '.join(SEVERITIES)}, got {value!r}")
            return None
        return value
    if name == "enabled":
        if not isinstance(value, bool):
            errors.add(where, f"must be true or false, got {value!r}")
            return None
        return value
    if name in ("description", "field", "metric", "sql"):
        if not isinstance(value, str):
            errors.add(where, f"must be a string, got {value!r}")
            return None
        return value
    if name == "op":
        if value not in OPS:
            errors.add(where, f"must be one of {', '.join(OPS)}, got {value!r}")
            return None
        return value
    if name in ("for_s", "clear_s", "window_s", "max_silence_s"):
        return _duration(value, where, errors)
    if name in ("renotify_s", "interval_s"):
        if value is None:
            return None
        return _duration(value, where, errors)
    if name in ("threshold", "hysteresis"):
        return _number(value, where, errors, minimum=0.0 if name == "hysteresis" else None)
    if name == "clear_threshold":
        return None if value is None else _number(value, where, errors)
    if name == "min_ranks":
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            errors.add(where, f"must be an integer >= 2, got {value!r}")
            return None
        return value
    if name == "mask":
        return _mask(value, where, errors)
    if name == "exclude":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in value):
            errors.add(where, f"must be a list of integer codes, got {value!r}")
            return None
        return tuple(value)
    if name == "metrics":
        if isinstance(value, str):
            value = [value]
        if (not isinstance(value, (list, tuple)) or not value
                or not all(isinstance(v, str) and v for v in value)):
            errors.add(where, f"must be a non-empty list of metric name globs, got {value!r}")
            return None
        return tuple(value)
    if name == "sources":
        if (not isinstance(value, (list, tuple)) or not value
                or not all(v in HEARTBEAT_SOURCES for v in value)):
            errors.add(where, f"must be a non-empty list of {', '.join(HEARTBEAT_SOURCES)}, got {value!r}")
            return None
        return tuple(dict.fromkeys(value))
    errors.add(where, "unknown field")
    return None


def _mask(value: Any, where: str, errors: _Errors) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            errors.add(where, f"must be a positive bit mask, got {value!r}")
            return None
        return value
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)) and value:
        bad = [v for v in value if v not in THROTTLE_REASONS]
        if bad:
            errors.add(where, f"unknown throttle reason(s) {bad}; known: {', '.join(THROTTLE_REASONS)}")
            return None
        out = 0
        for v in value:
            out |= THROTTLE_REASONS[v]
        return out
    errors.add(where, f"must be a bit mask or a list of reasons ({', '.join(THROTTLE_REASONS)}), got {value!r}")
    return None


def _check_rule(rule: Rule, where: str, errors: _Errors) -> None:
    """Cross-field checks of a complete rule (after defaults and overrides were merged)."""
    k = rule.kind
    needs_threshold = k in ("gpu_threshold", "gpu_counter_increase", "gpu_counter_rate", "metric_threshold",
                            "straggler", "heartbeat")
    if needs_threshold and math.isnan(rule.threshold):
        errors.add(f"{where}.threshold", "is required")
        return
    if k == "gpu_threshold" and rule.field not in GPU_THRESHOLD_FIELDS:
        errors.add(f"{where}.field", f"must be one of {', '.join(GPU_THRESHOLD_FIELDS)}, got {rule.field!r}")
    if k in ("gpu_counter_increase", "gpu_counter_rate") and rule.field not in GPU_COUNTER_FIELDS:
        errors.add(f"{where}.field", f"must be one of {', '.join(GPU_COUNTER_FIELDS)}, got {rule.field!r}")
    if k == "gpu_event" and rule.field not in GPU_EVENT_FIELDS:
        errors.add(f"{where}.field", f"must be one of {', '.join(GPU_EVENT_FIELDS)}, got {rule.field!r}")
    if k == "gpu_counter_increase" and rule.threshold < 1:
        errors.add(f"{where}.threshold", f"must be >= 1 (errors), got {fmt_number(rule.threshold)}")
    if k in ("gpu_threshold", "metric_threshold", "gpu_counter_rate", "straggler"):
        clear = rule.effective_clear
        op = ">=" if k in ("gpu_counter_rate", "straggler") else rule.op
        if op in (">=", ">") and clear > rule.threshold:
            errors.add(f"{where}.clear_threshold", f"must be <= threshold {fmt_number(rule.threshold)} "
                                                   f"for a '{op}' rule, got {fmt_number(clear)}")
        if op in ("<=", "<") and clear < rule.threshold:
            errors.add(f"{where}.clear_threshold", f"must be >= threshold {fmt_number(rule.threshold)} "
                                                   f"for a '{op}' rule, got {fmt_number(clear)}")
    if k in ("metric_nonfinite", "metric_threshold") and not rule.metrics:
        errors.add(f"{where}.metrics", "is required")
    if k == "straggler":
        if not rule.metric:
            errors.add(f"{where}.metric", "is required")
        if rule.threshold <= 1:
            errors.add(f"{where}.threshold", f"must be a ratio > 1, got {fmt_number(rule.threshold)}")
        if rule.window_s <= 0:
            errors.add(f"{where}.window_s", "must be > 0")
    if k == "gpu_counter_rate" and rule.window_s <= 0:
        errors.add(f"{where}.window_s", "must be > 0")
    if k == "heartbeat":
        if rule.threshold <= 0:
            errors.add(f"{where}.threshold", "must be > 0 seconds")
        if rule.max_silence_s <= rule.threshold:
            errors.add(f"{where}.max_silence_s", f"must be > threshold ({fmt_number(rule.threshold)} s)")
    if k == "gpu_throttle" and rule.mask <= 0:
        errors.add(f"{where}.mask", "is required")
    if k == "sql":
        _check_sql(rule.sql, f"{where}.sql", errors)
    if rule.interval_s is not None and rule.interval_s <= 0:
        errors.add(f"{where}.interval_s", "must be > 0")


def _check_sql(sql: str, where: str, errors: _Errors) -> None:
    text = sql.strip().rstrip(";").strip()
    if not text:
        errors.add(where, "is required")
        return
    if not re.match(r"^(select|with)\b", text, re.IGNORECASE):
        errors.add(where, "must be one SELECT (or WITH ... SELECT) query")
    elif ";" in text:
        errors.add(where, "must be a single statement (no ';' inside)")
    for name, type_ in sql_placeholders(text).items():
        if name not in SQL_PARAMETERS:
            errors.add(where, f"unknown parameter {{{name}:{type_}}}; available: "
                              + ", ".join(f"{{{n}:{t}}}" for n, t in SQL_PARAMETERS.items()))


def _build(name: str, fields: Mapping[str, Any], where: str, errors: _Errors,
           base: Rule | None) -> Rule | None:
    """A Rule from `base` (None: a new rule, `kind` required) with `fields` applied."""
    if not _NAME.match(name):
        errors.add(where, f"rule name must match {_NAME.pattern}")
        return None
    if not isinstance(fields, Mapping):
        errors.add(where, f"must be a table of fields, got {fields!r}")
        return None
    kind = fields.get("kind", base.kind if base else None)
    if base is None and kind is None:
        errors.add(f"{where}.kind", f"is required for a new rule (not a built-in one); one of {', '.join(KINDS)}")
        return None
    if kind not in KINDS:
        errors.add(f"{where}.kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
        return None
    if base is not None and kind != base.kind:
        errors.add(f"{where}.kind", f"cannot change the kind of rule {name!r} ({base.kind})")
        return None
    allowed = set(COMMON_FIELDS) | set(KIND_FIELDS[kind])
    values: dict[str, Any] = {}
    before = len(errors.items)
    for key, raw in fields.items():
        if key == "kind":
            continue
        if key not in allowed:
            errors.add(f"{where}.{key}", f"unknown field for a {kind} rule; allowed: {', '.join(sorted(allowed - {'kind'}))}")
            continue
        converted = _convert(key, raw, f"{where}.{key}", errors)
        if converted is not None or key in ("renotify_s", "interval_s", "clear_threshold"):
            values[key] = converted
    if len(errors.items) > before:
        return None
    rule = dataclasses.replace(base, **values) if base is not None else Rule(name=name, kind=kind, **values)
    _check_rule(rule, where, errors)
    return rule


def _builtin_rules() -> dict[str, Rule]:
    errors = _Errors()
    rules = {name: _build(name, fields, f"builtin.{name}", errors, None) for name, fields in BUILTIN_RULES.items()}
    if errors.items:  # a bug in this module, not a user error
        raise AssertionError("\n".join(errors.items))
    return rules  # type: ignore[return-value]


class RuleSet:
    """The effective rules: global rules (built-ins overridden by the file's [rules]) and, per
    project, those overridden again by the file's [projects.P.rules]."""

    def __init__(self, rules: Mapping[str, Rule], projects: Mapping[str, Mapping[str, Rule]] | None = None,
                 source: str = "built-in") -> None:
        self.rules = dict(rules)
        self.projects = {p: dict(r) for p, r in (projects or {}).items()}
        self.source = source
        self._cache: dict[str, tuple[Rule, ...]] = {}

    @classmethod
    def builtin(cls) -> "RuleSet":
        return cls(_builtin_rules())

    def all_for(self, project: str) -> dict[str, Rule]:
        """Every rule (enabled or not) in effect for `project`, by name."""
        merged = dict(self.rules)
        merged.update(self.projects.get(project, {}))
        return merged

    def for_project(self, project: str) -> tuple[Rule, ...]:
        """The enabled rules in effect for `project` (cached)."""
        out = self._cache.get(project)
        if out is None:
            out = tuple(r for r in self.all_for(project).values() if r.enabled)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[project] = out
        return out

    def periodic_variants(self) -> list[tuple[Rule, str | None, tuple[str, ...]]]:
        """Periodic rules as (rule, project, excluded): project None means every project but
        `excluded` (those that override the rule); a project name means that project only."""
        out = []
        overriding: dict[str, list[str]] = {}
        for project, rules in self.projects.items():
            for name in rules:
                overriding.setdefault(name, []).append(project)
        for name, rule in self.rules.items():
            if rule.kind in PERIODIC_KINDS and rule.enabled:
                out.append((rule, None, tuple(sorted(overriding.get(name, ())))))
        for project in sorted(self.projects):
            for rule in self.projects[project].values():
                if rule.kind in PERIODIC_KINDS and rule.enabled:
                    out.append((rule, project, ()))
        return out

    def describe(self, project: str | None = None) -> list[dict[str, Any]]:
        """The effective rules as plain dicts (for `runwire alerts rules --json`)."""
        rules = self.all_for(project) if project is not None else self.rules
        return [rule_to_dict(r) for r in rules.values()]


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"name": rule.name}
    for key in COMMON_FIELDS + KIND_FIELDS[rule.kind]:
        value = getattr(rule, key)
        if isinstance(value, tuple):
            value = list(value)
        if key == "mask":
            value = mask_names(value)
        if isinstance(value, float) and math.isnan(value):
            continue
        out[key] = value
    if rule.kind in ("gpu_threshold", "metric_threshold", "gpu_counter_rate", "straggler"):
        out["effective_clear"] = round(rule.effective_clear, 12)
    out["condition"] = rule.condition_text()
    return out


def parse_rules(data: Mapping[str, Any], source: str = "rules file") -> RuleSet:
    """The RuleSet for a parsed rules document; raises RulesError listing every problem."""
    errors = _Errors()
    builtins = _builtin_rules()
    if not isinstance(data, Mapping):
        raise RulesError([f"{source}: must be a table with [rules] and [projects.NAME.rules]"])
    for key in data:
        if key not in ("rules", "projects"):
            errors.add(key, "unknown section; expected [rules.NAME] or [projects.PROJECT.rules.NAME]")
    rules = dict(builtins)
    section = data.get("rules", {})
    if not isinstance(section, Mapping):
        errors.add("rules", "must be a table of rules")
        section = {}
    for name, fields in section.items():
        rule = _build(name, fields, f"rules.{name}", errors, builtins.get(name))
        if rule is not None:
            rules[name] = rule
    projects: dict[str, dict[str, Rule]] = {}
    psection = data.get("projects", {})
    if not isinstance(psection, Mapping):
        errors.add("projects", "must be a table of projects")
        psection = {}
    for project, body in psection.items():
        where = f"projects.{project}"
        if not isinstance(project, str) or not 1 <= len(project) <= 128:
            errors.add(where, "project names are 1-128 characters")
            continue
        if not isinstance(body, Mapping):
            errors.add(where, "must be a table with a [rules] table")
            continue
        for key in body:
            if key != "rules":
                errors.add(f"{where}.{key}", "unknown section; expected rules")
        prules = body.get("rules", {})
        if not isinstance(prules, Mapping):
            errors.add(f"{where}.rules", "must be a table of rules")
            continue
        for name, fields in prules.items():
            # A project rule starts from the global rule of that name, as overridden by the file.
            base = rules.get(name)
            rule = _build(name, fields, f"{where}.rules.{name}", errors, base)
            if rule is not None:
                projects.setdefault(project, {})[name] = rule
    if errors.items:
        raise RulesError(errors.items)
    return RuleSet(rules, projects, source=source)


def load_rules(path: str | Path | None) -> RuleSet:
    """The RuleSet of a rules file (.toml, or .yaml/.yml with PyYAML); built-ins when `path` is
    empty. Raises RulesError (a ConfigError) naming the file and every problem."""
    if not path:
        return RuleSet.builtin()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError([f"{p}: cannot read the rules file: {exc.strerror or exc}"]) from None
    suffix = p.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise RulesError([f"{p}: YAML rules need PyYAML (pip install pyyaml); or write the file as TOML"]) from None
            data = yaml.safe_load(text) or {}
        else:
            data = _toml_loads(text)
    except RulesError:
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError
        raise RulesError([f"{p}: not valid {'YAML' if suffix in ('.yaml', '.yml') else 'TOML'}: {exc}"]) from None
    try:
        return parse_rules(data, source=str(p))
    except RulesError as exc:
        raise RulesError([f"{p}: {e}" for e in exc.errors]) from None


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise RulesError(["TOML rules files need Python 3.11+ (tomllib) or the tomli package"]) from None
    return tomllib.loads(text)
