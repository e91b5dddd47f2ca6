"""Alert lifecycle: pending -> firing -> resolved, one open alert per (rule, entity),
deterministic ids, re-notify, adoption after a restart; the table rows they become."""

from __future__ import annotations

import math

from runwire.ingest.alerts.condition import Entity, Transition
from runwire.ingest.alerts.lifecycle import Alert, Lifecycle, alert_id
from runwire.ingest.alerts.rules import RuleSet, parse_rules
from runwire.ingest.alerts.store import COLUMNS, alert_row, row_to_alert

S = 1_000_000_000
T0 = 1_750_000_000 * S
RULES = RuleSet.builtin().rules
GPU = Entity("p", "run-1", "node-0", "GPU-a", 3, label="GPU 0")


def tr(state, at, since, rule="gpu_temperature_critical", entity=GPU, value=90.0, detail="temperature_c 90"):
    return Transition(RULES[rule], entity, state, T0 + int(at * S), T0 + int(since * S), value, detail)


def test_pending_firing_resolved():
    lc = Lifecycle(renotify_s=0)
    (e1,) = lc.apply([tr("pending", 0, 0)])
    (e2,) = lc.apply([tr("firing", 60, 0)])
    (e3,) = lc.apply([tr("resolved", 200, 0, value=70.0, detail="temperature_c 70")])
    assert [e.kind for e in (e1, e2, e3)] == ["pending", "firing", "resolved"]
    assert [e.notify for e in (e1, e2, e3)] == [False, True, True]
    assert e1.alert.alert_id == e2.alert.alert_id == e3.alert.alert_id
    a = e3.alert
    assert (a.state, a.started_ns, a.fired_ns, a.resolved_ns) == ("resolved", T0, T0 + 60 * S, T0 + 200 * S)
    assert e1.alert.updated_ns < e2.alert.updated_ns < e3.alert.updated_ns
    assert (a.project, a.run_id, a.host, a.gpu_uuid, a.rank, a.severity) == ("p", "run-1", "node-0", "GPU-a", 3,
                                                                             "critical")
    assert "node-0" in a.message and "temperature_c 70" in a.message
    assert lc.open_alerts() == []


def test_ids_are_deterministic_and_per_episode():
    assert alert_id("r", GPU, T0) == alert_id("r", GPU, T0)
    assert alert_id("r", GPU, T0) != alert_id("r", GPU, T0 + 1)
    assert alert_id("r", GPU, T0) != alert_id("other", GPU, T0)
    assert alert_id("r", GPU, T0) != alert_id("r", Entity("p", "run-1", "node-0", "GPU-b"), T0)
    # The sampling rank of a GPU is display only: the same GPU is the same entity.
    assert alert_id("r", GPU, T0) == alert_id("r", Entity("p", "run-1", "node-0", "GPU-a", 7), T0)
    a, b = Lifecycle(), Lifecycle()
    ids = [[e.alert.alert_id for e in lc.apply([tr("firing", 5, 5)])] for lc in (a, b)]
    assert ids[0] == ids[1]  # two engines (or a replay) give the same id


def test_one_open_alert_per_rule_and_entity():
    lc = Lifecycle()
    events = lc.apply([tr("firing", 0, 0), tr("firing", 1, 0), tr("pending", 2, 2)])
    assert [e.kind for e in events] == ["firing"]
    events = lc.apply([tr("firing", 3, 3, rule="gpu_temperature_warning"),
                       tr("firing", 3, 3, entity=Entity("p", "run-1", "node-0", "GPU-b"))])
    assert len(events) == 2 and len(lc.open_alerts()) == 3
    (e,) = lc.apply([tr("resolved", 10, 0)])
    (again,) = lc.apply([tr("firing", 20, 20)])
    assert again.alert.alert_id != e.alert.alert_id  # a new episode is a new alert


def test_direct_firing_and_cancelled_pending():
    lc = Lifecycle()
    (e,) = lc.apply([tr("firing", 0, 0, rule="gpu_xid", value=79.0, detail="XID 79")])
    assert e.kind == "firing" and e.alert.fired_ns == e.alert.started_ns
    (p,) = lc.apply([tr("pending", 0, 0)])
    (c,) = lc.apply([tr("inactive", 10, 0)])
    assert (c.kind, c.notify, c.alert.state) == ("inactive", False, "inactive")
    assert lc.apply([tr("resolved", 11, 0)]) == []  # nothing open any more


def test_renotify_interval():
    rule_override = parse_rules({"rules": {"gpu_xid": {"renotify_s": 600}}}).rules["gpu_xid"]
    lc = Lifecycle(renotify_s=3600)
    lc.apply([tr("firing", 0, 0)])
    lc.apply([Transition(rule_override, GPU, "firing", T0, T0, 79.0, "XID 79")])
    assert lc.tick(T0 + 599 * S) == []
    (e,) = lc.tick(T0 + 600 * S)
    assert (e.kind, e.alert.rule, e.notify, e.alert.state) == ("renotify", "gpu_xid", True, "firing")
    assert lc.tick(T0 + 1000 * S) == []
    kinds = sorted((e.kind, e.alert.rule) for e in lc.tick(T0 + 3600 * S))
    assert kinds == [("renotify", "gpu_temperature_critical"), ("renotify", "gpu_xid")]
    assert Lifecycle(renotify_s=0).tick(T0 + 10**6 * S) == []


def test_adopted_alert_continues_or_resolves():
    lc = Lifecycle()
    first = Lifecycle().apply([tr("firing", 0, 0)])[0].alert
    stored = row_to_alert(alert_row(first))  # what a restarted engine reads back
    assert lc.adopt([stored], lambda a: T0 + 300 * S) == 1
    # Seen again: the same alert continues, no second notification.
    assert lc.apply([tr("pending", 100, 100), tr("firing", 160, 100)]) == []
    (e,) = lc.apply([tr("resolved", 300, 100)])
    assert (e.kind, e.alert.alert_id) == ("resolved", first.alert_id)

    lc = Lifecycle()
    lc.adopt([stored], lambda a: T0 + 300 * S)
    assert lc.tick(T0 + 400 * S, owns=lambda a: False) == []  # another engine's: leave it
    (e,) = lc.tick(T0 + 400 * S, owns=lambda a: True)
    assert (e.kind, e.alert.alert_id, e.alert.state) == ("resolved", first.alert_id, "resolved")
    assert "restart" in e.alert.message


def test_table_rows_round_trip():
    lc = Lifecycle()
    lc.apply([tr("pending", 0, 0)])
    a = lc.apply([tr("firing", 60, 0)])[0].alert
    row = alert_row(a)
    assert len(row) == len(COLUMNS)
    named = dict(zip(COLUMNS, row))
    assert named["started_at"] == T0 // 1000 and named["resolved_at"] is None and named["rank"] == 3
    assert named["updated_at"] == a.updated_ns
    back = row_to_alert(row)
    assert (back.alert_id, back.state, back.rank, back.started_ns) == (a.alert_id, "firing", 3, T0)
    rank_alert = Lifecycle().apply([tr("firing", 0, 0, rule="straggler", entity=Entity("p", "r", "", "", 2, "step"),
                                       value=math.nan)])[0].alert
    assert math.isnan(alert_row(rank_alert)[COLUMNS.index("value")])


def test_close_run():
    lc = Lifecycle()
    lc.apply([tr("firing", 0, 0), tr("firing", 0, 0, entity=Entity("p", "run-2", "h", "GPU-z"))])
    events = lc.close_run("p", "run-1", T0 + 5 * S, "run ended")
    assert [(e.kind, e.alert.run_id) for e in events] == [("resolved", "run-1")]
    assert [a.run_id for a in lc.open_alerts()] == ["run-2"]


def test_close_run_of_one_rank_and_pending_alerts():
    lc = Lifecycle()
    rank = lambda k: Entity("p", "run-1", "", "", k, "step_time_s")  # noqa: E731
    lc.apply([tr("firing", 0, 0, rule="straggler", entity=rank(2)), tr("pending", 1, 1, rule="straggler", entity=rank(3))])
    assert lc.close_run("p", "run-1", T0 + 5 * S, "rank 1 ended", rank=1) == []
    (ended,) = lc.close_run("p", "run-1", T0 + 5 * S, "rank 3 ended with exit code 0", rank=3)
    assert (ended.kind, ended.notify, ended.alert.state) == ("inactive", False, "inactive")
    assert ended.alert.message.endswith(" -- inactive: rank 3 ended with exit code 0")
    (resolved,) = lc.close_run("p", "run-1", T0 + 6 * S, "run run-1 ended with exit code 0")
    assert (resolved.kind, resolved.notify, resolved.alert.resolved_ns) == ("resolved", True, T0 + 6 * S)
    assert lc.open_alerts() == []


def test_alert_is_frozen():
    a = Lifecycle().apply([tr("firing", 0, 0)])[0].alert
    assert isinstance(a, Alert)
    try:
        a.state = "x"  # type: ignore[misc]
    except Exception:
        pass
    else:
        raise AssertionError("Alert must be immutable: events are shared by threads")


def test_run_timeline_counts_only_alerts_that_fired():
    from runwire.ingest.alerts.report import timeline

    lc = Lifecycle()
    straggler = lambda k: Entity("p", "run-1", "", "", k, "step_time_s")  # noqa: E731
    lc.apply([tr("firing", 0, 0), tr("firing", 1, 1, rule="straggler", entity=straggler(2)),
              tr("pending", 2, 2, rule="straggler", entity=straggler(3))])
    ended = lc.close_run("p", "run-1", T0 + 5 * S, "run run-1 ended with exit code 0")
    assert sorted(e.alert.state for e in ended) == ["inactive", "resolved", "resolved"]
    text = timeline([e.alert for e in ended], T0, T0 + 10 * S)
    assert text.splitlines()[0] == "alerts: 2 fired, over the run's 10 s:"
    assert "inactive" not in text and text.count("resolved +5s") == 2
    still_open = timeline([e.alert for e in lc.apply([tr("pending", 20, 20)])], T0, T0 + 30 * S)
    assert still_open.splitlines()[0] == "alerts: 0 fired, 1 pending (not fired yet), over the run's 30 s:"
    assert timeline([], T0, T0 + S) == "alerts: none fired"
