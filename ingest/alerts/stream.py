"""Stream rules, evaluated on decoded records as they arrive (pure: no I/O, no clocks).

`StreamEvaluator.observe(kind, record)` takes the decoded records of runwire.ingest.codec
(GPU batches, metric batches, run events) and returns the `Transition`s they cause. State is
kept per (rule, entity): a GPU is (project, run, host, GPU uuid), a metric is (project, run,
rank, metric name). Durations use the samples' own timestamps.

Kinds handled here: gpu_threshold, gpu_throttle, gpu_counter_increase, gpu_counter_rate,
gpu_event, metric_nonfinite, metric_threshold (see rules.py).
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterator

import numpy as np

from runwire.ingest.alerts.condition import (
    COLD, FIRING, HOLD, HOT, PENDING, Condition, Entity, Transition, level_of,
)
from runwire.ingest.alerts.rules import (
    GPU_DERIVED_FIELDS, Rule, RuleSet, fmt_duration, fmt_number, mask_names, metric_matcher,
)

_NS = 1_000_000_000
_GPU_KINDS = ("gpu_threshold", "gpu_throttle", "gpu_counter_increase", "gpu_counter_rate", "gpu_event")
_METRIC_KINDS = ("metric_nonfinite", "metric_threshold")
# Kinds whose evaluator keeps memory between samples (a counter baseline), so their condition
# exists from the first sample on, not only from the first HOT one.
_STATEFUL = ("gpu_counter_increase", "gpu_counter_rate")


class _Tracked:
    __slots__ = ("rule", "entity", "cond")

    def __init__(self, rule: Rule, entity: Entity) -> None:
        self.rule = rule
        self.entity = entity
        self.cond = Condition()


class _MetricRule:
    """A metric rule with its name matcher and a memo of the names seen."""

    __slots__ = ("rule", "match", "memo")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.match = metric_matcher(rule.metrics)
        self.memo: dict[str, bool] = {}

    def matches(self, name: str) -> bool:
        hit = self.memo.get(name)
        if hit is None:
            if len(self.memo) > 50_000:  # unbounded metric names: forget, do not grow forever
                self.memo.clear()
            hit = self.memo[name] = self.match(name)
        return hit


class _Compiled:
    __slots__ = ("gpu", "metric")

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.gpu = [r for r in rules if r.kind in _GPU_KINDS]
        self.metric = [_MetricRule(r) for r in rules if r.kind in _METRIC_KINDS]


class StreamEvaluator:
    """Evaluates the stream rules of `rules` on records; not thread-safe (one evaluator thread).

    idle_s: a (rule, entity) with no observation for this long (by `expire(now_ns)`, wall
    clock) is forgotten; a firing one is resolved first ("no data").
    """

    def __init__(self, rules: RuleSet, idle_s: float = 600.0) -> None:
        self.rules = rules
        self.idle_s = idle_s
        self._compiled: dict[str, _Compiled] = {}
        self._tracked: dict[tuple, _Tracked] = {}
        self._by_run: dict[tuple[str, str], set[tuple]] = {}
        self.counters = {"records": 0, "gpu_samples": 0, "metric_points": 0, "transitions": 0}

    # ---- entry points ------------------------------------------------------------------------

    def observe(self, kind: str, record: dict) -> list[Transition]:
        """Transitions caused by one decoded record (kind: "gpu", "metrics" or "runs")."""
        self.counters["records"] += 1
        if kind == "gpu":
            out = self._gpu(record)
        elif kind == "metrics":
            out = self._metrics(record)
        elif kind == "runs":
            out = self._run_event(record)
        else:
            out = []
        self.counters["transitions"] += len(out)
        return out

    def expire(self, now_ns: int) -> list[Transition]:
        """Forget conditions not observed for idle_s; resolve the firing ones ("no data")."""
        limit = now_ns - self.idle_s * _NS
        out = []
        for key, t in list(self._tracked.items()):
            if t.cond.last_ns < limit:
                idle = (now_ns - t.cond.last_ns) / _NS
                out.extend(self._close(key, t, now_ns, f"no data for {fmt_duration(round(idle))}"))
        self.counters["transitions"] += len(out)
        return out

    def open_conditions(self) -> Iterator[tuple[Rule, Entity, str]]:
        """(rule, entity, state) of every pending or firing condition (for tests and stats)."""
        for t in self._tracked.values():
            if t.cond.state in (PENDING, FIRING):
                yield t.rule, t.entity, t.cond.state

    def __len__(self) -> int:
        return len(self._tracked)

    # ---- plumbing ----------------------------------------------------------------------------

    def _compiled_for(self, project: str) -> _Compiled:
        c = self._compiled.get(project)
        if c is None:
            if len(self._compiled) > 10_000:
                self._compiled.clear()
            c = self._compiled[project] = _Compiled(self.rules.for_project(project))
        return c

    def _get(self, rule: Rule, entity: Entity, create: bool) -> _Tracked | None:
        key = (rule.name, entity.key)
        t = self._tracked.get(key)
        if t is None and create:
            t = self._tracked[key] = _Tracked(rule, entity)
            self._by_run.setdefault((entity.project, entity.run_id), set()).add(key)
        return t

    def _drop(self, key: tuple, t: _Tracked) -> None:
        self._tracked.pop(key, None)
        run = (t.entity.project, t.entity.run_id)
        keys = self._by_run.get(run)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_run[run]

    def _close(self, key: tuple, t: _Tracked, at_ns: int, why: str) -> list[Transition]:
        state = t.cond.close()
        self._drop(key, t)
        if state is None:
            return []
        return [Transition(t.rule, t.entity, state, at_ns, t.cond.started_ns, float("nan"), why)]

    def _step(self, t: _Tracked, ts: int, level: int, value: float, detail: Callable[[], str],
              out: list[Transition], drop: bool = True) -> None:
        state = t.cond.update(t.rule, ts, level)
        if state is not None:
            out.append(Transition(t.rule, t.entity, state, ts, t.cond.started_ns, value, detail()))
            if drop and t.cond.idle and t.rule.kind not in _STATEFUL:
                self._drop((t.rule.name, t.entity.key), t)

    # ---- run events --------------------------------------------------------------------------

    def _run_event(self, record: dict) -> list[Transition]:
        body = record.get("body")
        if not body or not str(body[0]).endswith("RunEnd"):
            return []
        # A rank's end closes what that rank reported: its metrics and the GPUs it sampled.
        end_ns = int(body[1].get("end_time_ns") or record.get("received_ns") or 0)
        rank = record["rank"]
        out: list[Transition] = []
        for key in list(self._by_run.get((record["project"], record["run_id"]), ())):
            t = self._tracked.get(key)
            if t is not None and t.entity.rank == rank:
                out.extend(self._close(key, t, end_ns, "the rank finished"))
        return out

    # ---- GPU samples -------------------------------------------------------------------------

    def _gpu(self, r: dict) -> list[Transition]:
        rules = self._compiled_for(r["project"]).gpu
        out: list[Transition] = []
        refs = r["gpu_ref"]
        n = len(refs)
        self.counters["gpu_samples"] += n
        if not rules or not n:
            return out
        entities: dict[int, Entity] = {}
        ts_col = r["timestamps_ns"]
        for i in range(n):
            ref = int(refs[i])
            entity = entities.get(ref)
            if entity is None:
                entity = entities[ref] = Entity(
                    r["project"], r["run_id"], r["host"], r["gpu_uuids"][ref], r["rank"],
                    label=f"GPU {r['gpu_indexes'][ref]}")
            ts = int(ts_col[i])
            for rule in rules:
                self._gpu_rule(rule, entity, r, i, ts, out)
        return out

    def _gpu_rule(self, rule: Rule, entity: Entity, r: dict, i: int, ts: int, out: list[Transition]) -> None:
        kind = rule.kind
        if kind == "gpu_threshold":
            value = _gpu_value(r, rule.field, i)
            level = level_of(rule, value)
            t = self._get(rule, entity, create=level == HOT)
            if t is not None:
                self._step(t, ts, level, value, lambda: _threshold_detail(rule, value), out)
        elif kind == "gpu_throttle":
            active = int(r["throttle_reasons"][i]) & rule.mask
            level = HOT if active else COLD
            t = self._get(rule, entity, create=level == HOT)
            if t is not None:
                self._step(t, ts, level, float(active), lambda: _throttle_detail(rule, active), out)
        elif kind == "gpu_event":
            code = int(r[rule.field][i])
            level = HOT if code and code not in rule.exclude else COLD
            t = self._get(rule, entity, create=level == HOT)
            if t is not None:
                self._step(t, ts, level, float(code), lambda: f"{rule.field.upper()} {code}", out)
        elif kind == "gpu_counter_increase":
            value = float(r[rule.field][i])
            if value != value:  # unsupported (NaN): nothing to compare
                return
            t = self._get(rule, entity, create=True)
            baseline = t.cond.aux
            t.cond.aux = value
            if baseline is None or value < baseline:  # first sample, or the driver reset the counter
                increase, level = 0.0, COLD
            else:
                increase = value - baseline
                level = HOT if increase >= rule.threshold else COLD
            self._step(t, ts, level, increase, lambda: f"{rule.field} +{fmt_number(increase)} (total {fmt_number(value)})",
                       out)
        elif kind == "gpu_counter_rate":
            value = float(r[rule.field][i])
            if value != value:
                return
            t = self._get(rule, entity, create=True)
            rate = _rate_per_min(t.cond, ts, value, rule.window_s)
            clear = max(0.0, rule.effective_clear)
            level = HOT if rate > rule.threshold else (COLD if rate <= clear else HOLD)
            self._step(t, ts, level, rate,
                       lambda: f"{rule.field} {fmt_number(round(rate, 2))}/min over {fmt_duration(rule.window_s)} "
                               f"(> {fmt_number(rule.threshold)}/min)", out)

    # ---- metrics -----------------------------------------------------------------------------

    def _metrics(self, r: dict) -> list[Transition]:
        rules = self._compiled_for(r["project"]).metric
        out: list[Transition] = []
        values = r["values"]
        self.counters["metric_points"] += len(values)
        if not rules or not len(values):
            return out
        names = r["names"]
        name_index = r["name_index"]
        for mr in rules:
            rule = mr.rule
            for j, name in enumerate(names):
                if not mr.matches(name):
                    continue
                sel = np.flatnonzero(name_index == j)
                if not len(sel):
                    continue
                vals = values[sel]
                if rule.kind == "metric_nonfinite":
                    levels = np.where(np.isfinite(vals), COLD, HOT)
                else:
                    levels = _threshold_levels(rule, vals)
                entity = Entity(r["project"], r["run_id"], r["host"], "", r["rank"], name)
                t = self._get(rule, entity, create=bool((levels == HOT).any()))
                if t is None:
                    continue
                ts = r["timestamps_ns"][sel]
                steps = r["steps"][sel]
                for k in _decisive_points(t.cond, rule, ts, levels):
                    value, step = float(vals[k]), int(steps[k])
                    if rule.kind == "metric_nonfinite":
                        detail = (lambda v=value, s=step, n=name: f"{n} = {v} at step {s}")
                    else:
                        detail = (lambda v=value, s=step, n=name:
                                  f"{n} = {fmt_number(v)} at step {s} ({rule.op} {fmt_number(rule.threshold)})")
                    self._step(t, int(ts[k]), int(levels[k]), value, detail, out, drop=False)
                if t.cond.idle:
                    self._drop((rule.name, entity.key), t)
        return out


def _decisive_points(cond: Condition, rule: Rule, ts: np.ndarray, levels: np.ndarray) -> Iterator[int]:
    """Indices of the points that can change the condition's state, in order: where the level
    changes, where a for/clear duration runs out within a stretch of equal levels, and the last
    point. So a batch of thousands of points costs a few steps, with exact transition times."""
    n = len(levels)
    starts = [0, *(np.flatnonzero(np.diff(levels)) + 1).tolist()]
    for i, a in enumerate(starts):
        b = starts[i + 1] - 1 if i + 1 < len(starts) else n - 1
        yield a
        # After point a the condition may wait for a duration to pass within this stretch.
        deadline = None
        if cond.state == PENDING and cond.on:
            deadline = cond.changed_ns + int(rule.for_s * _NS)
        elif cond.state == FIRING and not cond.on:
            deadline = cond.changed_ns + int(rule.clear_s * _NS)
        if deadline is not None and b > a:
            k = a + int(np.searchsorted(ts[a:b + 1], deadline, side="left"))
            if a < k < b:
                yield k
        if b > a:
            yield b


def _gpu_value(r: dict, field: str, i: int) -> float:
    parts = GPU_DERIVED_FIELDS.get(field)
    if parts is None:
        return float(r[field][i])
    num, den = float(r[parts[0]][i]), float(r[parts[1]][i])
    if not den > 0:  # unknown total or limit: unknown fraction (NaN holds the state)
        return float("nan")
    return num / den


def _threshold_levels(rule: Rule, vals: np.ndarray) -> np.ndarray:
    op, thr, clear = rule.op, rule.threshold, rule.effective_clear
    with np.errstate(invalid="ignore"):
        if op == ">=":
            hot = vals >= thr
        elif op == ">":
            hot = vals > thr
        elif op == "<=":
            hot = vals <= thr
        else:
            hot = vals < thr
        if clear == thr:
            cold = ~hot & ~np.isnan(vals)
        elif op in (">=", ">"):
            cold = vals < clear
        else:
            cold = vals > clear
    return np.where(hot, HOT, np.where(cold, COLD, HOLD))


def _rate_per_min(cond: Condition, ts: int, value: float, window_s: float) -> float:
    """Counter increase over the last window, per minute. The window memory lives in cond.aux."""
    window = cond.aux
    if window is None or (window and value < window[-1][1]):  # new, or the counter was reset
        window = cond.aux = deque()
    window.append((ts, value))
    horizon = ts - int(window_s * _NS)
    # Keep one sample at or before the horizon as the base of the window.
    while len(window) >= 2 and window[1][0] <= horizon:
        window.popleft()
    base = window[0][1]
    return (value - base) * 60.0 / window_s


def _threshold_detail(rule: Rule, value: float) -> str:
    shown = f"{value:.1%}" if rule.field.endswith("_fraction") else fmt_number(round(value, 3))
    limit = f"{rule.threshold:.0%}" if rule.field.endswith("_fraction") else fmt_number(rule.threshold)
    hold = f" for {fmt_duration(rule.for_s)}" if rule.for_s else ""
    return f"{rule.field} {shown} ({rule.op} {limit}{hold})"


def _throttle_detail(rule: Rule, active: int) -> str:
    names = mask_names(active)
    return f"clocks throttled: {', '.join(names) if names else 'none'}" + (
        f" (for {fmt_duration(rule.for_s)})" if rule.for_s and names else "")
