"""Alert lifecycle (pure): condition transitions -> alerts and the events to store and notify.

One open alert per (rule, entity). An alert is born pending (or firing directly when the rule
has no for-duration), fires, and resolves; a pending alert whose condition cleared before it
fired ends as "inactive" (stored, never notified). Its id is deterministic: a hash of the rule,
the entity and the time its condition began (a sample timestamp), so a replayed record or a
second engine evaluating the same data produces the same id and the `alerts` table
(ReplacingMergeTree keyed by alert_id, versioned by updated_at) keeps one row per alert.

A firing alert is re-notified every `renotify_s` (per rule, else the default; 0 disables).

After a restart the engine `adopt`s the alerts the table still holds open: when the condition
is seen again the adopted alert continues (same id, no second notification); when the engine
sees the entity's run again but not the condition within a grace period, it resolves it.

When a run ends (rank 0's end) every open alert of the run ends with it (`close_run`): firing
ones resolve, pending ones end inactive, with the reason in the message; a rank's end does the
same for that rank's alerts. Every state and reason: README "Alerting", "Alert states".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from runwire.ingest.alerts.condition import FIRING, INACTIVE, PENDING, RESOLVED, Entity, Transition, entity_key

RENOTIFY = "renotify"
NOTIFY_KINDS = (FIRING, RENOTIFY, RESOLVED)
OPEN_STATES = (PENDING, FIRING)


@dataclass(frozen=True)
class Alert:
    """One alert as stored in the `alerts` table (plus what notifiers need)."""

    alert_id: str
    rule: str
    severity: str
    state: str                  # pending | firing | resolved | inactive
    project: str
    run_id: str
    host: str
    gpu_uuid: str
    rank: int | None
    subject: str
    value: float
    message: str
    started_ns: int             # when the condition began
    fired_ns: int | None        # when it started firing
    resolved_ns: int | None
    updated_ns: int             # version of the row (strictly increasing per alert)
    observed_ns: int            # timestamp of the observation behind the latest change
    description: str = ""


@dataclass(frozen=True)
class AlertEvent:
    """Something that happened to an alert: pending, firing, renotify, resolved or inactive."""

    kind: str
    alert: Alert

    @property
    def notify(self) -> bool:
        return self.kind in NOTIFY_KINDS


def alert_id(rule: str, entity: Entity, started_ns: int) -> str:
    text = "\x1f".join(["runwire.alert.v1", rule, *("" if v is None else str(v) for v in entity.key),
                        str(int(started_ns))])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def adoption_key(rule: str, project: str, run_id: str, host: str, gpu_uuid: str, rank: int | None) -> tuple:
    # The table has no subject column, so adopted alerts match on the rest of the entity.
    return (rule, *entity_key(project, run_id, host, gpu_uuid, rank, "")[:5])


class _Open:
    __slots__ = ("alert", "notified_ns", "renotify_s", "adopted_until_ns")

    def __init__(self, alert: Alert, renotify_s: float | None, adopted_until_ns: int | None = None) -> None:
        self.alert = alert
        self.notified_ns = alert.fired_ns or 0
        self.renotify_s = renotify_s
        self.adopted_until_ns = adopted_until_ns


class Lifecycle:
    """Turns Transitions into AlertEvents. Not thread-safe: the engine serialises calls.

    renotify_s: default re-notify interval for firing alerts (rules may override; 0: never).
    """

    def __init__(self, renotify_s: float = 3600.0) -> None:
        self.renotify_s = renotify_s
        self._open: dict[tuple, _Open] = {}
        self._adopted: dict[tuple, _Open] = {}
        self.counters = {"pending": 0, "firing": 0, "resolved": 0, "inactive": 0, "renotify": 0, "adopted": 0}

    # ---- transitions -------------------------------------------------------------------------

    def apply(self, transitions: Iterable[Transition]) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        for t in transitions:
            self._apply(t, out)
        return out

    def _apply(self, t: Transition, out: list[AlertEvent]) -> None:
        key = (t.rule.name, t.entity.key)
        o = self._open.get(key)
        if o is None:
            akey = adoption_key(t.rule.name, t.entity.project, t.entity.run_id, t.entity.host,
                                t.entity.gpu_uuid, t.entity.rank)
            o = self._adopted.pop(akey, None)
            if o is not None:
                o.adopted_until_ns = None
                o.renotify_s = t.rule.renotify_s
                self._open[key] = o
        state = t.state
        if o is None:
            if state in (PENDING, FIRING):
                alert = Alert(
                    alert_id=alert_id(t.rule.name, t.entity, t.since_ns), rule=t.rule.name,
                    severity=t.rule.severity, state=state, project=t.entity.project, run_id=t.entity.run_id,
                    host=t.entity.host, gpu_uuid=t.entity.gpu_uuid, rank=t.entity.rank, subject=t.entity.subject,
                    value=t.value, message=_message(t), started_ns=t.since_ns,
                    fired_ns=t.at_ns if state == FIRING else None, resolved_ns=None,
                    updated_ns=max(t.at_ns, t.since_ns), observed_ns=t.at_ns,
                    description=t.rule.description)
                o = self._open[key] = _Open(alert, t.rule.renotify_s)
                o.notified_ns = t.at_ns
                self._emit(state, alert, out)
            return  # resolved / inactive of an alert we do not hold: nothing to close
        a = o.alert
        if state == FIRING and a.state == PENDING:
            o.alert = self._change(a, FIRING, t, fired_ns=t.at_ns)
            o.notified_ns = t.at_ns
            self._emit(FIRING, o.alert, out)
        elif state in (RESOLVED, INACTIVE):
            final = RESOLVED if a.state == FIRING else INACTIVE
            del self._open[key]
            self._emit(final, self._change(a, final, t, resolved_ns=t.at_ns), out)
        # pending/firing of an alert already in that state or beyond (adopted): nothing new

    def _change(self, a: Alert, state: str, t: Transition, **fields) -> Alert:
        return replace(a, state=state, value=t.value, message=_message(t, state), observed_ns=t.at_ns,
                       updated_ns=max(t.at_ns, a.updated_ns + 1), **fields)

    def _emit(self, kind: str, alert: Alert, out: list[AlertEvent]) -> None:
        self.counters[kind] += 1
        out.append(AlertEvent(kind, alert))

    # ---- time --------------------------------------------------------------------------------

    def tick(self, now_ns: int, owns: Callable[[Alert], bool] = lambda a: False) -> list[AlertEvent]:
        """Re-notify long-firing alerts; resolve adopted alerts past their grace period whose
        entity this engine evaluates (`owns`) but whose condition it has not seen again."""
        out: list[AlertEvent] = []
        for o in self._open.values():
            a = o.alert
            interval = self.renotify_s if o.renotify_s is None else o.renotify_s
            if a.state == FIRING and interval > 0 and now_ns - o.notified_ns >= interval * 1e9:
                o.notified_ns = now_ns
                o.alert = replace(a, updated_ns=max(now_ns, a.updated_ns + 1))
                self._emit(RENOTIFY, o.alert, out)
        for akey, o in list(self._adopted.items()):
            if o.adopted_until_ns is not None and now_ns >= o.adopted_until_ns and owns(o.alert):
                del self._adopted[akey]
                a = o.alert
                final = RESOLVED if a.state == FIRING else INACTIVE
                self._emit(final, replace(
                    a, state=final, resolved_ns=now_ns, observed_ns=now_ns,
                    updated_ns=max(now_ns, a.updated_ns + 1),
                    message=f"{a.message} -- {final}: not seen again after a restart"), out)
        return out

    # ---- restart -----------------------------------------------------------------------------

    def adopt(self, alerts: Iterable[Alert], grace_until_ns: Callable[[Alert], int]) -> int:
        """Take over open alerts (pending/firing) stored by a previous engine."""
        n = 0
        for a in alerts:
            if a.state not in OPEN_STATES:
                continue
            akey = adoption_key(a.rule, a.project, a.run_id, a.host, a.gpu_uuid, a.rank)
            if akey in self._adopted or any(o.alert.alert_id == a.alert_id for o in self._open.values()):
                continue
            o = _Open(a, None, grace_until_ns(a))
            o.notified_ns = a.updated_ns
            self._adopted[akey] = o
            n += 1
        self.counters["adopted"] += n
        return n

    def open_alerts(self) -> list[Alert]:
        return [o.alert for o in self._open.values()] + [o.alert for o in self._adopted.values()]

    def close_run(self, project: str, run_id: str, at_ns: int, why: str, rank: int | None = None) -> list[AlertEvent]:
        """End every open alert of a run (of one rank of it with `rank`): the run or the rank
        finished, so nothing will confirm or clear them any more. A firing alert resolves, a
        pending one ends inactive, both with `why` appended to their message."""
        out: list[AlertEvent] = []
        for table in (self._open, self._adopted):
            for key, o in list(table.items()):
                a = o.alert
                if a.project == project and a.run_id == run_id and (rank is None or a.rank == rank):
                    del table[key]
                    final = RESOLVED if a.state == FIRING else INACTIVE
                    self._emit(final, replace(a, state=final, resolved_ns=max(at_ns, a.started_ns),
                                              observed_ns=at_ns, updated_ns=max(at_ns, a.updated_ns + 1),
                                              message=f"{a.message} -- {final}: {why}"), out)
        return out


def _message(t: Transition, state: str | None = None) -> str:
    """What and why, e.g. "GPU 1 GPU-... on node-1, run r: temperature_c 93 (>= 85 for 3 s)".
    The rule's name and severity travel beside it (title, columns), its description in payloads."""
    text = t.entity.describe()
    return f"{text}: {t.detail}" if t.detail else text
