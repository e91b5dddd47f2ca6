"""The condition state machine shared by the stream and the periodic evaluators (pure).

Each (rule, entity) has a `Condition`. Every observation is classified by its rule as HOT (the
firing condition holds: e.g. temperature >= 85), COLD (the clear condition holds: temperature
< 82, the threshold minus the hysteresis) or HOLD (in between, or unknown such as NaN). The
condition is a Schmitt trigger on that: HOT turns it on, COLD turns it off, HOLD keeps it, so a
value hovering at the threshold does not flap. Then:

    inactive --on--> pending --on for for_s--> firing --off for clear_s--> resolved (inactive)
                        \\--off--> inactive (cancelled before it fired)

With for_s = 0 an alert fires on its first HOT observation (no pending step). All times are the
observations' own timestamps (sample time for the stream, evaluation time for SQL rules), never
the wall clock, so evaluation is deterministic and replays give the same transitions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from runwire.ingest.alerts.rules import Rule

HOT, HOLD, COLD = 1, 0, -1

INACTIVE, PENDING, FIRING = "inactive", "pending", "firing"
RESOLVED = "resolved"

_NS = 1_000_000_000


@dataclass(frozen=True)
class Entity:
    """What an alert is about. Identity is `key`: a GPU (project, run, host, GPU uuid), a rank
    (project, run, rank), a host, a run, plus `subject` (e.g. the metric name). The rank of a
    GPU entity is the rank that sampled it and the host of a rank entity where it runs: both
    display only, so a late-known host cannot split one entity in two. `label` is display only."""

    project: str
    run_id: str = ""
    host: str = ""
    gpu_uuid: str = ""
    rank: int | None = None
    subject: str = ""
    label: str = field(default="", compare=False)

    @property
    def key(self) -> tuple:
        return entity_key(self.project, self.run_id, self.host, self.gpu_uuid, self.rank, self.subject)

    def describe(self) -> str:
        """E.g. "GPU 1 GPU-c7b9... on node-1, run r", "loss of rank 3 on node-1, run r"."""
        if self.gpu_uuid:
            who = f"{self.label or 'GPU'} {self.gpu_uuid}" + (f" on {self.host}" if self.host else "")
        elif self.rank is not None:
            who = f"rank {self.rank}" + (f" on {self.host}" if self.host else "")
        else:
            who = self.host
        if self.subject:
            who = f"{self.subject} of {who}" if who else self.subject
        if self.run_id:
            who = f"{who}, run {self.run_id}" if who else f"run {self.run_id}"
        return who or f"project {self.project}"


def entity_key(project: str, run_id: str, host: str, gpu_uuid: str, rank: int | None, subject: str) -> tuple:
    if gpu_uuid:
        return (project, run_id, host, gpu_uuid, None, subject)
    if rank is not None:
        return (project, run_id, "", "", rank, subject)
    return (project, run_id, host, "", None, subject)


@dataclass(frozen=True)
class Transition:
    """A state change of one (rule, entity) condition."""

    rule: Rule
    entity: Entity
    state: str        # pending | firing | resolved | inactive (a pending one that never fired)
    at_ns: int        # timestamp of the observation that caused it
    since_ns: int     # when the condition (this episode) began: the alert's started_at
    value: float
    detail: str = ""


class Condition:
    """Schmitt trigger + for/clear durations for one (rule, entity). `update` returns the new
    state when it changed (pending, firing, resolved, inactive), else None."""

    __slots__ = ("on", "changed_ns", "state", "started_ns", "last_ns", "aux")

    def __init__(self) -> None:
        self.on = False
        self.changed_ns = 0      # when `on` last changed
        self.state = INACTIVE
        self.started_ns = 0      # when the current pending/firing episode began
        self.last_ns = -math.inf
        self.aux = None          # per-rule evaluator memory (counter baselines, rate windows)

    def update(self, rule: Rule, ts_ns: int, level: int) -> str | None:
        if ts_ns < self.last_ns:
            return None  # older than what we have seen: a replayed record, already evaluated
        self.last_ns = ts_ns
        if level == HOT and not self.on:
            self.on, self.changed_ns = True, ts_ns
        elif level == COLD and self.on:
            self.on, self.changed_ns = False, ts_ns
        state = self.state
        if state == INACTIVE:
            if self.on:
                self.started_ns = self.changed_ns
                if ts_ns - self.changed_ns >= rule.for_s * _NS:
                    self.state = FIRING
                    return FIRING
                self.state = PENDING
                return PENDING
        elif state == PENDING:
            if not self.on:
                self.state = INACTIVE
                return INACTIVE
            if ts_ns - self.changed_ns >= rule.for_s * _NS:
                self.state = FIRING
                return FIRING
        elif not self.on and ts_ns - self.changed_ns >= rule.clear_s * _NS:
            self.state = INACTIVE
            return RESOLVED
        return None

    def close(self) -> str | None:
        """End the condition from outside (run ended, no more data): the transition, if any."""
        state, self.state, self.on = self.state, INACTIVE, False
        if state == FIRING:
            return RESOLVED
        if state == PENDING:
            return INACTIVE
        return None

    @property
    def idle(self) -> bool:
        """Nothing to remember beyond evaluator memory: safe to drop when no aux is needed."""
        return self.state == INACTIVE and not self.on


def compare(op: str, value: float, threshold: float) -> bool:
    if op == ">=":
        return value >= threshold
    if op == ">":
        return value > threshold
    if op == "<=":
        return value <= threshold
    return value < threshold


def level_of(rule: Rule, value: float, op: str | None = None) -> int:
    """HOT / COLD / HOLD of a value against a threshold rule with hysteresis (NaN: HOLD)."""
    if value != value:  # NaN
        return HOLD
    op = op or rule.op
    if compare(op, value, rule.threshold):
        return HOT
    clear = rule.effective_clear
    if clear == rule.threshold:  # no hysteresis: whatever is not HOT is clear
        return COLD
    if op in (">=", ">"):
        return COLD if value < clear else HOLD
    return COLD if value > clear else HOLD
