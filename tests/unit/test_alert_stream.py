"""Stream rules on decoded records: every built-in stream rule fires and resolves, for-durations
count sample time, hysteresis keeps a hovering value from flapping."""

from __future__ import annotations

import math

import pytest

from runwire.ingest.alerts.condition import HOLD, HOT, COLD, Condition, level_of
from runwire.testing.records import GIB, gpu_record, gpu_sample, metric_record, run_end_record
from runwire.ingest.alerts.rules import THROTTLE_REASONS, RuleSet, parse_rules
from runwire.ingest.alerts.stream import StreamEvaluator

S = 1_000_000_000
T0 = 1_750_000_000 * S


def only(rules: RuleSet, *names: str) -> RuleSet:
    keep = {n: r for n, r in rules.rules.items() if n in names}
    return RuleSet(keep)


def feed_gpu(ev: StreamEvaluator, series, **sample_fields_by_time):
    """series: iterable of (seconds, {field: value}); returns all transitions as (rule, state, t)."""
    out = []
    for t, fields in series:
        kind, rec = gpu_record([gpu_sample(T0 + int(t * S), **fields)])
        out += [(x.rule.name, x.state, (x.at_ns - T0) / S) for x in ev.observe(kind, rec)]
    return out


def test_condition_state_machine():
    rule = parse_rules({"rules": {"gpu_temperature_critical": {"for_s": 10, "clear_s": 5}}}).rules[
        "gpu_temperature_critical"]
    c = Condition()
    assert c.update(rule, 0, COLD) is None
    assert c.update(rule, 1 * S, HOT) == "pending" and c.started_ns == 1 * S
    assert c.update(rule, 5 * S, HOLD) is None          # in the hysteresis band: still on
    assert c.update(rule, 11 * S, HOT) == "firing"
    assert c.update(rule, 12 * S, COLD) is None          # clear, but not for clear_s yet
    assert c.update(rule, 13 * S, HOT) is None           # back on: stays firing
    assert c.update(rule, 14 * S, COLD) is None
    assert c.update(rule, 19 * S, COLD) == "resolved"
    assert c.update(rule, 18 * S, HOT) is None           # older than what was seen: ignored
    assert c.update(rule, 20 * S, HOT) == "pending" and c.started_ns == 20 * S
    assert c.update(rule, 21 * S, COLD) == "inactive"   # cleared before it fired


def test_levels_with_hysteresis():
    rule = RuleSet.builtin().rules["gpu_temperature_critical"]  # >= 85, clear below 82
    assert [level_of(rule, v) for v in (85, 90, 84.9, 82, 81.9, math.nan)] == [HOT, HOT, HOLD, HOLD, COLD, HOLD]


def test_temperature_critical_fires_after_60s_and_resolves_with_hysteresis():
    ev = StreamEvaluator(only(RuleSet.builtin(), "gpu_temperature_critical"))
    series = [(t, {"temperature_c": 70.0}) for t in range(0, 10)]
    series += [(t, {"temperature_c": 90.0}) for t in range(10, 80)]       # hot from t=10
    series += [(t, {"temperature_c": 84.0}) for t in range(80, 200)]      # below 85, above the clear level
    series += [(t, {"temperature_c": 75.0}) for t in range(200, 260)]     # clear from t=200
    out = feed_gpu(ev, series)
    assert out == [("gpu_temperature_critical", "pending", 10.0),
                   ("gpu_temperature_critical", "firing", 70.0),           # for_s = 60 in sample time
                   ("gpu_temperature_critical", "resolved", 230.0)]        # clear_s = 30


def test_temperature_short_spike_never_fires():
    ev = StreamEvaluator(only(RuleSet.builtin(), "gpu_temperature_critical"))
    series = [(t, {"temperature_c": 90.0 if 10 <= t < 40 else 70.0}) for t in range(0, 100)]
    assert feed_gpu(ev, series) == [("gpu_temperature_critical", "pending", 10.0),
                                    ("gpu_temperature_critical", "inactive", 40.0)]


def test_hovering_value_does_not_flap():
    rules = parse_rules({"rules": {"gpu_temperature_critical": {"for_s": 5, "clear_s": 10}}})
    ev = StreamEvaluator(only(rules, "gpu_temperature_critical"))
    # 84.5 / 85.5 alternating for 10 minutes: one alert, never resolved, never re-pending.
    series = [(t, {"temperature_c": 85.5 if t % 2 else 84.5}) for t in range(1, 600)]
    out = feed_gpu(ev, series)
    assert out == [("gpu_temperature_critical", "pending", 1.0), ("gpu_temperature_critical", "firing", 6.0)]
    # Without hysteresis the same series would flap on every sample.
    flappy = parse_rules({"rules": {"gpu_temperature_critical": {"for_s": 0, "clear_s": 0, "hysteresis": 0}}})
    out = feed_gpu(StreamEvaluator(only(flappy, "gpu_temperature_critical")), series[:20])
    assert len(out) >= 18


def test_memory_near_oom():
    ev = StreamEvaluator(only(RuleSet.builtin(), "gpu_memory_near_oom"))
    total = 80.0 * GIB
    series = [(t, {"memory_used_bytes": 0.97 * total}) for t in range(0, 40)]
    series += [(t, {"memory_used_bytes": 0.5 * total}) for t in range(40, 80)]
    assert feed_gpu(ev, series) == [("gpu_memory_near_oom", "pending", 0.0), ("gpu_memory_near_oom", "firing", 30.0),
                                    ("gpu_memory_near_oom", "resolved", 70.0)]


def test_unknown_total_memory_holds_state():
    ev = StreamEvaluator(only(RuleSet.builtin(), "gpu_memory_near_oom"))
    out = feed_gpu(ev, [(t, {"memory_used_bytes": 79.0 * GIB, "memory_total_bytes": math.nan}) for t in range(60)])
    assert out == []


def test_throttling_thermal_and_power_but_not_idle():
    ev = StreamEvaluator(only(RuleSet.builtin(), "gpu_throttle"))
    idle = THROTTLE_REASONS["gpu_idle"]
    thermal = THROTTLE_REASONS["sw_thermal"] | THROTTLE_REASONS["hw_thermal"]
    series = [(t, {"throttle_reasons": idle}) for t in range(0, 100)]
    series += [(t, {"throttle_reasons": thermal}) for t in range(100, 170)]
    series += [(t, {"throttle_reasons": 0}) for t in range(170, 210)]
    out = feed_gpu(ev, series)
    assert out == [("gpu_throttle", "pending", 100.0), ("gpu_throttle", "firing", 160.0),
                   ("gpu_throttle", "resolved", 200.0)]
    kind, rec = gpu_record([gpu_sample(T0 + 300 * S, throttle_reasons=THROTTLE_REASONS["sw_power_cap"])])
    (t,) = ev.observe(kind, rec)
    assert t.state == "pending" and "sw_power_cap" in t.detail


def test_uncorrected_ecc_increase_fires_at_once():
    ev = StreamEvaluator(only(RuleSet.builtin(), "gpu_ecc_uncorrected"))
    series = [(0, {"ecc_uncorrected": 2.0})]                    # errors from before: a baseline, not an alert
    series += [(t, {"ecc_uncorrected": 2.0}) for t in range(1, 10)]
    series += [(10, {"ecc_uncorrected": 3.0})]
    series += [(t, {"ecc_uncorrected": 3.0}) for t in range(11, 1000, 10)]
    out = feed_gpu(ev, series)
    assert out[0] == ("gpu_ecc_uncorrected", "firing", 10.0)
    assert out[1][1] == "resolved" and out[1][2] >= 10 + 900
    assert len(out) == 2


def test_unsupported_ecc_is_ignored_and_counter_reset_is_a_new_baseline():
    ev = StreamEvaluator(only(RuleSet.builtin(), "gpu_ecc_uncorrected"))
    assert feed_gpu(ev, [(t, {"ecc_uncorrected": math.nan}) for t in range(5)]) == []
    out = feed_gpu(ev, [(10, {"ecc_uncorrected": 7.0}), (11, {"ecc_uncorrected": 0.0}), (12, {"ecc_uncorrected": 0.0})])
    assert out == []


def test_corrected_ecc_rate():
    ev = StreamEvaluator(only(RuleSet.builtin(), "gpu_ecc_corrected_rate"))  # > 10/min, clear <= 5/min
    series = [(t, {"ecc_corrected": float(t // 10)}) for t in range(0, 120)]       # 6/min: quiet
    assert feed_gpu(ev, series) == []
    series = [(t, {"ecc_corrected": 12.0 + (t - 120) * 0.5}) for t in range(120, 200)]  # 30/min
    out = feed_gpu(ev, series)
    assert out[0][:2] == ("gpu_ecc_corrected_rate", "firing")
    flat = 12.0 + 79 * 0.5
    out = feed_gpu(ev, [(t, {"ecc_corrected": flat}) for t in range(200, 700, 5)])
    assert [o[1] for o in out] == ["resolved"]


def test_xid_event_fires_and_resolves():
    ev = StreamEvaluator(only(RuleSet.builtin(), "gpu_xid"))
    series = [(0, {}), (5, {"xid": 79})] + [(t, {}) for t in range(6, 400, 5)]
    out = feed_gpu(ev, series)
    assert out[0] == ("gpu_xid", "firing", 5.0)
    assert out[1][1] == "resolved" and len(out) == 2
    excluded = parse_rules({"rules": {"gpu_xid": {"exclude": [13, 31]}}})
    ev = StreamEvaluator(only(excluded, "gpu_xid"))
    assert feed_gpu(ev, [(0, {"xid": 13}), (1, {"xid": 31})]) == []


def test_power_pinned_at_limit():
    ev = StreamEvaluator(only(RuleSet.builtin(), "gpu_power_at_limit"))
    series = [(t, {"power_w": 695.0}) for t in range(0, 301)]
    out = feed_gpu(ev, series)
    assert out == [("gpu_power_at_limit", "pending", 0.0), ("gpu_power_at_limit", "firing", 300.0)]


def test_gpu_entities_are_separate():
    ev = StreamEvaluator(only(parse_rules({"rules": {"gpu_temperature_critical": {"for_s": 0}}}),
                              "gpu_temperature_critical"))
    kind, rec = gpu_record([gpu_sample(T0, "GPU-a", 0, temperature_c=95.0), gpu_sample(T0, "GPU-b", 1),
                            gpu_sample(T0, "GPU-c", 2, temperature_c=99.0)], host="node-3", rank=5)
    out = ev.observe(kind, rec)
    assert sorted(t.entity.gpu_uuid for t in out) == ["GPU-a", "GPU-c"]
    t = out[0]
    assert (t.entity.host, t.entity.rank, t.entity.run_id, t.entity.project) == ("node-3", 5, "run-1", "p")
    assert "GPU 0" in t.entity.describe() and "temperature_c 95" in t.detail


def test_nan_and_inf_loss():
    ev = StreamEvaluator(only(RuleSet.builtin(), "loss_nonfinite"))
    pts = [("loss", s, T0 + s * S, 2.0 - s / 100) for s in range(50)]
    pts += [("accuracy", s, T0 + s * S, math.nan) for s in range(50)]       # not a loss: ignored
    kind, rec = metric_record(pts, rank=3)
    assert ev.observe(kind, rec) == []
    pts = [("loss", 50, T0 + 50 * S, 1.5), ("val_loss", 50, T0 + 50 * S, math.inf), ("loss", 51, T0 + 51 * S, math.nan)]
    pts += [("loss", s, T0 + s * S, math.nan) for s in range(52, 60)]
    kind, rec = metric_record(pts, rank=3)
    out = ev.observe(kind, rec)
    assert sorted((t.entity.subject, t.state, (t.at_ns - T0) // S) for t in out) == [
        ("loss", "firing", 51), ("val_loss", "firing", 50)]
    loss = next(t for t in out if t.entity.subject == "loss")
    assert loss.entity.rank == 3 and "step 51" in loss.detail and "nan" in loss.detail
    # finite again: resolves after clear_s (60 s) of finite values
    kind, rec = metric_record([("loss", s, T0 + s * S, 1.0) for s in range(60, 200)], rank=3)
    out = ev.observe(kind, rec)
    assert [(t.entity.subject, t.state, (t.at_ns - T0) // S) for t in out] == [("loss", "resolved", 120)]


def test_metric_threshold_rule():
    rules = parse_rules({"rules": {"grad_explodes": {"kind": "metric_threshold", "metrics": ["grad_norm"],
                                                     "threshold": 100, "hysteresis": 50, "for_s": 2}}})
    ev = StreamEvaluator(only(rules, "grad_explodes"))
    vals = [1, 1, 150, 150, 80, 150, 150, 40, 40]  # 80 is in the band: no reset
    kind, rec = metric_record([("grad_norm", s, T0 + s * S, v) for s, v in enumerate(vals)])
    assert [(t.state, (t.at_ns - T0) // S) for t in ev.observe(kind, rec)] == [
        ("pending", 2), ("firing", 4), ("resolved", 7)]


def test_run_end_resolves_the_ranks_alerts():
    rules = parse_rules({"rules": {"gpu_temperature_critical": {"for_s": 0}}})
    ev = StreamEvaluator(only(rules, "gpu_temperature_critical", "loss_nonfinite"))
    kind, rec = gpu_record([gpu_sample(T0, temperature_c=95.0)], rank=1)
    ev.observe(kind, rec)
    kind, rec = metric_record([("loss", 1, T0, math.nan)], rank=1)
    ev.observe(kind, rec)
    kind, rec = metric_record([("loss", 1, T0, math.nan)], rank=2)
    ev.observe(kind, rec)
    kind, rec = run_end_record(T0 + 5 * S, rank=1)
    out = ev.observe(kind, rec)
    assert sorted((t.rule.name, t.state) for t in out) == [("gpu_temperature_critical", "resolved"),
                                                            ("loss_nonfinite", "resolved")]
    assert [e.rank for _, e, _ in ev.open_conditions()] == [2]


def test_expire_forgets_silent_entities():
    rules = parse_rules({"rules": {"gpu_temperature_critical": {"for_s": 0}}})
    ev = StreamEvaluator(only(rules, "gpu_temperature_critical"), idle_s=60)
    kind, rec = gpu_record([gpu_sample(T0, temperature_c=95.0)])
    assert ev.observe(kind, rec)[0].state == "firing"
    assert ev.expire(T0 + 30 * S) == []
    (t,) = ev.expire(T0 + 61 * S)
    assert t.state == "resolved" and "no data" in t.detail and len(ev) == 0


def test_replayed_records_do_not_change_state():
    ev = StreamEvaluator(only(parse_rules({"rules": {"gpu_temperature_critical": {"for_s": 0, "clear_s": 0}}}),
                              "gpu_temperature_critical"))
    hot = gpu_record([gpu_sample(T0 + S, temperature_c=95.0)])
    cool = gpu_record([gpu_sample(T0 + 2 * S, temperature_c=60.0)])
    assert [t.state for t in ev.observe(*hot)] == ["firing"]
    assert [t.state for t in ev.observe(*cool)] == ["resolved"]
    ev.observe(*gpu_record([gpu_sample(T0 + 3 * S, temperature_c=95.0)]))
    assert ev.observe(*hot) == []  # an old record replayed after a newer one


@pytest.mark.parametrize("n", [8192])
def test_large_metric_batch_is_cheap(n):
    import time

    ev = StreamEvaluator(RuleSet.builtin())
    names = [f"layer{i}/act" for i in range(48)] + ["loss", "step_time_s"]
    pts = [(names[i % 50], i // 50, T0 + i, float(i)) for i in range(n)]
    kind, rec = metric_record(pts)
    start = time.perf_counter()
    for _ in range(20):
        ev.observe(kind, rec)
    # A loose bound (benchmarks hold the real targets): 20 batches of 8192 points well under 1 s.
    assert time.perf_counter() - start < 1.0
