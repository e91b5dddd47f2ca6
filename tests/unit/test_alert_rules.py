"""Alert rules: built-in defaults, the rules file (TOML, YAML), validation naming rule and field."""

from __future__ import annotations

import json
import textwrap

import pytest

from runwire.ingest import codec
from runwire.ingest.alerts import commands
from runwire.ingest.alerts.rules import (
    BUILTIN_RULES, DEFAULT_THROTTLE_MASK, GPU_DERIVED_FIELDS, GPU_FLOAT_FIELDS, RuleSet, RulesError, THROTTLE_REASONS,
    load_rules, metric_matcher, parse_rules,
)


def test_derived_gpu_fields_are_fractions_of_contract_fields():
    for num, den in GPU_DERIVED_FIELDS.values():
        assert num in GPU_FLOAT_FIELDS and den in GPU_FLOAT_FIELDS


def test_throttle_bits_are_pynvmls():
    pynvml = pytest.importorskip("pynvml")
    assert THROTTLE_REASONS["sw_thermal"] == pynvml.nvmlClocksEventReasonSwThermalSlowdown
    assert THROTTLE_REASONS["hw_thermal"] == pynvml.nvmlClocksEventReasonHwThermalSlowdown
    assert THROTTLE_REASONS["hw_power_brake"] == pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
    assert THROTTLE_REASONS["hw_slowdown"] == pynvml.nvmlClocksEventReasonHwSlowdown
    assert THROTTLE_REASONS["sw_power_cap"] == pynvml.nvmlClocksEventReasonSwPowerCap
    assert DEFAULT_THROTTLE_MASK & pynvml.nvmlClocksEventReasonGpuIdle == 0


def test_builtin_defaults():
    rules = RuleSet.builtin().rules
    assert set(rules) == set(BUILTIN_RULES)
    crit, warn = rules["gpu_temperature_critical"], rules["gpu_temperature_warning"]
    assert (crit.threshold, crit.for_s, crit.severity) == (85, 60, "critical")
    assert (warn.threshold, warn.for_s, warn.severity) == (80, 300, "warning")
    assert crit.effective_clear < crit.threshold  # hysteresis
    oom = rules["gpu_memory_near_oom"]
    assert (oom.field, oom.threshold, oom.for_s) == ("memory_used_fraction", 0.95, 30)
    assert rules["gpu_throttle"].for_s == 60
    assert rules["gpu_ecc_uncorrected"].severity == "critical"
    assert rules["gpu_xid"].severity == "critical"
    assert rules["gpu_power_at_limit"].threshold == 0.98 and rules["gpu_power_at_limit"].for_s == 300
    s = rules["straggler"]
    assert (s.metric, s.threshold, s.for_s, s.severity) == ("step_time_s", 1.5, 120, "warning")
    assert rules["loss_nonfinite"].severity == "critical"
    hb = rules["heartbeat"]
    assert (hb.threshold, hb.severity) == (120, "warning")


def test_loss_pattern_matches_loss_names_only():
    match = metric_matcher(RuleSet.builtin().rules["loss_nonfinite"].metrics)
    assert match("loss") and match("val_loss") and match("train/Loss") and match("loss_scale")
    assert not match("accuracy") and not match("lr")


def _write(tmp_path, text: str, name: str = "rules.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_file_overrides_globally_and_per_project(tmp_path):
    path = _write(tmp_path, """
        [rules.gpu_temperature_critical]
        threshold = 88
        for_s = "30s"
        severity = "warning"

        [rules.gpu_power_at_limit]
        enabled = false

        [rules.slow_data]
        kind = "sql"
        sql = "SELECT project, run_id, 1 AS value FROM runs WHERE start_time < {now:DateTime64(6, 'UTC')}"
        interval_s = "1m"

        [projects.llm.rules.gpu_temperature_critical]
        for_s = "2m"

        [projects.llm.rules.straggler]
        threshold = 1.3
        hysteresis = 0.1
        metric = "iter_time"
    """)
    rules = load_rules(path)
    g = rules.for_project("other")
    names = {r.name for r in g}
    assert "gpu_power_at_limit" not in names and "slow_data" in names
    crit = rules.all_for("other")["gpu_temperature_critical"]
    assert (crit.threshold, crit.for_s, crit.severity, crit.effective_clear) == (88, 30, "warning", 85)
    llm = rules.all_for("llm")
    # The project starts from the file's global rule, then applies its own fields.
    assert (llm["gpu_temperature_critical"].threshold, llm["gpu_temperature_critical"].for_s) == (88, 120)
    assert (llm["straggler"].threshold, llm["straggler"].metric) == (1.3, "iter_time")
    assert rules.all_for("llm")["slow_data"].interval_s == 60
    variants = {(r.name, p): ex for r, p, ex in rules.periodic_variants()}
    assert variants[("straggler", None)] == ("llm",)
    assert ("straggler", "llm") in variants and variants[("slow_data", None)] == ()


def test_validation_collects_every_error_naming_rule_and_field(tmp_path):
    path = _write(tmp_path, """
        [rules.gpu_temperature_critical]
        threshold = "hot"
        severity = "urgent"
        colour = "red"

        [rules.gpu_temperature_warning]
        hysteresis = 100
        clear_threshold = 90

        [rules.brand_new]
        threshold = 3

        [rules.custom]
        kind = "sql"
        sql = "DELETE FROM alerts"

        [rules.custom2]
        kind = "sql"
        sql = "SELECT 1 AS value WHERE {since:DateTime}"

        [rules.gpu_throttle]
        mask = ["sw_thermal", "too_hot"]

        [projects.llm.rules.heartbeat]
        threshold = "5 minutes"

        [projects.llm.rules.straggler]
        kind = "heartbeat"

        [alarms]
    """)
    with pytest.raises(RulesError) as info:
        load_rules(path)
    errors = info.value.errors
    text = "\n".join(errors)
    expected = [
        "rules.gpu_temperature_critical.threshold: must be a number",
        "rules.gpu_temperature_critical.severity: must be one of info, warning, critical",
        "rules.gpu_temperature_critical.colour: unknown field",
        "rules.gpu_temperature_warning.clear_threshold: must be <= threshold 80",
        "rules.brand_new.kind: is required for a new rule",
        "rules.custom.sql: must be one SELECT",
        "rules.custom2.sql: unknown parameter {since:DateTime}",
        "rules.gpu_throttle.mask: unknown throttle reason(s) ['too_hot']",
        "projects.llm.rules.heartbeat.threshold: must be a number",
        "projects.llm.rules.straggler.kind: cannot change the kind",
        "alarms: unknown section",
    ]
    for item in expected:
        assert item in text, f"missing {item!r} in:\n{text}"
    assert all(e.startswith(str(path)) for e in errors)  # every error names the file too


def test_durations_and_bad_toml(tmp_path):
    rules = parse_rules({"rules": {"gpu_xid": {"clear_s": "1h"}, "heartbeat": {"threshold": 300}}})
    assert rules.rules["gpu_xid"].clear_s == 3600
    with pytest.raises(RulesError, match="for_s: must be seconds or a duration"):
        parse_rules({"rules": {"gpu_throttle": {"for_s": "soon"}}})
    with pytest.raises(RulesError, match="not valid TOML"):
        load_rules(_write(tmp_path, "[rules\n"))
    with pytest.raises(RulesError, match="cannot read the rules file"):
        load_rules(tmp_path / "missing.toml")


def test_yaml_rules_when_pyyaml_is_there(tmp_path):
    pytest.importorskip("yaml")
    path = _write(tmp_path, """
        rules:
          gpu_memory_near_oom:
            threshold: 0.9
            hysteresis: 0.05
    """, name="rules.yaml")
    assert load_rules(path).rules["gpu_memory_near_oom"].threshold == 0.9


def test_cli_rules_prints_effective_rules_and_errors(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    good = _write(tmp_path, """
        [projects.demo.rules.gpu_temperature_critical]
        for_s = 5
    """)
    args = parser.parse_args(["alerts", "rules", "--rules", str(good), "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in out["rules"]} >= {"gpu_temperature_critical", "straggler", "heartbeat"}
    assert out["projects"]["demo"][0]["for_s"] == 5
    args = parser.parse_args(["alerts", "rules", "--rules", str(good), "--project", "demo"])
    assert args.func(args) == 0
    assert "temperature_c >= 85 for 5 s" in capsys.readouterr().out
    bad = _write(tmp_path, "[rules.gpu_xid]\nseverity = 'loud'\n", name="bad.toml")
    args = parser.parse_args(["alerts", "rules", "--rules", str(bad)])
    assert args.func(args) == 2
    assert "rules.gpu_xid.severity" in capsys.readouterr().err
