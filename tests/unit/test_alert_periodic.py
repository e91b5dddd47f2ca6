"""Periodic rules, pure parts: query rows -> observations, conditions over evaluations, and the
SQL each rule runs (parameters only, never values in the text)."""

from __future__ import annotations

import pytest

from runwire.ingest.alerts.condition import COLD, HOT
from runwire.ingest.alerts.periodic import (
    PeriodicCore, PeriodicEvaluator, heartbeat_observations, sql_observations, straggler_observations,
)
from runwire.ingest.alerts.rules import RuleSet, parse_rules

S = 1_000_000_000
T0 = 1_750_000_000 * S
RULES = RuleSet.builtin().rules


def test_straggler_against_the_run_median():
    rule = RULES["straggler"]
    rows = [("p", "r1", 0, 1.0), ("p", "r1", 1, 1.05), ("p", "r1", 2, 0.95), ("p", "r1", 3, 1.6),
            ("p", "r2", 0, 1.0),                                    # one rank: no median, skipped
            ("q", "r3", 0, 1.0), ("q", "r3", 1, 1.4)]               # 1.4 / median 1.2 = 1.17x
    obs = {(o.entity.run_id, o.entity.rank): o for o in straggler_observations(rule, rows, {("p", "r1", 3): "node-1"})}
    assert obs[("r1", 3)].level == HOT and obs[("r1", 3)].value == pytest.approx(1.6 / 1.025)
    assert obs[("r1", 3)].entity.host == "node-1" and "median" in obs[("r1", 3)].detail
    assert obs[("r1", 0)].level == COLD
    assert ("r2", 0) not in obs
    assert obs[("r3", 1)].level == COLD


def test_straggler_fires_after_for_duration_and_resolves():
    rule = parse_rules({"rules": {"straggler": {"for_s": 30, "clear_s": 20}}}).rules["straggler"]
    core = PeriodicCore()
    slow = [("p", "r", 0, 1.0), ("p", "r", 1, 1.0), ("p", "r", 2, 2.0)]
    fast = [("p", "r", 0, 1.0), ("p", "r", 1, 1.0), ("p", "r", 2, 1.0)]
    states = []
    for i, rows in enumerate([slow] * 5 + [fast] * 4):
        now = T0 + i * 10 * S
        for t in core.apply(rule, ("straggler", None), now, straggler_observations(rule, rows)):
            states.append((t.state, (now - T0) // S, t.entity.rank))
    assert states == [("pending", 0, 2), ("firing", 30, 2), ("resolved", 70, 2)]


def test_entities_missing_from_an_evaluation_are_clear():
    rule = parse_rules({"rules": {"straggler": {"for_s": 0, "clear_s": 0}}}).rules["straggler"]
    core = PeriodicCore()
    slow = [("p", "r", 0, 1.0), ("p", "r", 1, 1.0), ("p", "r", 2, 3.0)]
    assert [t.state for t in core.apply(rule, ("s", None), T0, straggler_observations(rule, slow))] == ["firing"]
    (t,) = core.apply(rule, ("s", None), T0 + 15 * S, [])  # the run stopped logging step times
    assert t.state == "resolved" and t.detail == "condition no longer returned"


def test_heartbeat():
    rule = RULES["heartbeat"]  # 120 s
    now_us = T0 // 1000
    rows = [
        ("p", "fresh", now_us - 600_000_000, now_us - 5_000_000, 0),          # metrics 5 s ago
        ("p", "gpu-only", now_us - 600_000_000, 0, now_us - 1_000_000),        # GPU sample 1 s ago
        ("p", "silent", now_us - 900_000_000, now_us - 300_000_000, now_us - 200_000_000),
        ("p", "new", now_us - 30_000_000, 0, 0),                               # started 30 s ago
        ("p", "abandoned", now_us - 10 * 86400_000_000, now_us - 9 * 86400_000_000, 0),
    ]
    obs = {o.entity.run_id: o for o in heartbeat_observations(rule, rows, T0)}
    assert obs["fresh"].level == COLD and obs["gpu-only"].level == COLD and obs["new"].level == COLD
    assert obs["silent"].level == HOT and obs["silent"].value == pytest.approx(200)
    assert "abandoned" not in obs
    metrics_only = parse_rules({"rules": {"heartbeat": {"sources": ["metrics"]}}}).rules["heartbeat"]
    assert {o.entity.run_id: o.level for o in heartbeat_observations(metrics_only, rows, T0)}["gpu-only"] == HOT


def test_sql_rows():
    rule = parse_rules({"rules": {"x": {"kind": "sql", "sql": "SELECT 1 AS value"}}}).rules["x"]
    obs = sql_observations(rule, ["project", "run_id", "rank", "value", "message"],
                           [("p", "r", 3, 7.5, "slow loader"), ("q", "r", None, 1, None)], None)
    assert [(o.entity.project, o.entity.rank, o.value, o.detail, o.level) for o in obs] == [
        ("p", 3, 7.5, "slow loader", HOT), ("q", None, 1.0, "value 1", HOT)]
    scoped = sql_observations(rule, ["project", "value"], [("p", 1), ("q", 2)], "q")
    assert [o.entity.project for o in scoped] == ["q"]
    assert sql_observations(rule, ["value"], [(3,)], "q")[0].entity.project == "q"
    with pytest.raises(ValueError, match="value"):
        sql_observations(rule, ["project"], [("p",)], None)


class _FakeResult:
    def __init__(self, rows, columns=()):
        self.result_rows = rows
        self.column_names = columns


class _FakeClient:
    """Records queries; answers from a script."""

    def __init__(self, answers):
        self.answers = answers
        self.queries = []

    def query(self, sql, parameters=None):
        self.queries.append((sql, parameters))
        for needle, result in self.answers:
            if needle in sql:
                if isinstance(result, Exception):
                    raise result
                return result
        return _FakeResult([])


def test_evaluator_uses_parameters_and_scopes_projects():
    rules = parse_rules({
        "rules": {"custom": {"kind": "sql", "sql": "SELECT project, run_id, 1 AS value FROM runs "
                                                    "WHERE start_time < {now:DateTime64(6, 'UTC')}"}},
        "projects": {"llm": {"rules": {"straggler": {"threshold": 2}}}},
    })
    client = _FakeClient([("FROM metrics FINAL", _FakeResult([("p", "r", 0, 1.0), ("p", "r", 1, 1.0),
                                                               ("p", "r", 2, 5.0)])),
                          ("FROM run_ranks", _FakeResult([("p", "r", 2, "node-7")])),
                          ("FROM runs WHERE", _FakeResult([("p", "r9", 1)], ["project", "run_id", "value"]))])
    ev = PeriodicEvaluator(client, rules, interval_s=15)
    out = ev.evaluate(T0)
    assert sorted((t.rule.name, t.state, t.entity.run_id) for t in out) == [
        ("custom", "firing", "r9"), ("straggler", "pending", "r"), ("straggler", "pending", "r")]
    assert {t.entity.host for t in out if t.rule.name == "straggler"} == {"node-7"}
    for sql, params in client.queries:
        assert "'p'" not in sql and "'llm'" not in sql and "step_time_s" not in sql  # values are parameters
    straggler_queries = [(sql, p) for sql, p in client.queries if "FROM metrics FINAL" in sql]
    scopes = sorted((p.get("project") or "", tuple(p.get("excluded", ()))) for _, p in straggler_queries)
    assert scopes == [("", ("llm",)), ("llm", ())]
    custom = next(p for sql, p in client.queries if "FROM runs WHERE" in sql)
    assert set(custom) == {"now"}  # only the parameters the query uses
    assert ev.evaluate(T0 + 5 * S) == []  # not due yet
    assert ev.next_due_ns() == T0 + 15 * S


def test_a_failing_rule_does_not_stop_the_others(caplog):
    rules = parse_rules({"rules": {"custom": {"kind": "sql", "sql": "SELECT 1 AS value"}}})
    client = _FakeClient([("FROM metrics FINAL", RuntimeError("Code: 60. table missing")),
                          ("SELECT 1 AS value", _FakeResult([(1,)], ["value"]))])
    ev = PeriodicEvaluator(client, rules)
    out = ev.evaluate(T0)
    assert [t.rule.name for t in out] == ["custom"]
    assert ev.counters["errors"] == 1
    ev.evaluate(T0 + 60 * S)
    assert ev.counters["errors"] == 2
    assert sum("evaluation failed" in r.message for r in caplog.records) == 1  # logged once
