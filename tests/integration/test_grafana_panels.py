"""Every Grafana dashboard query runs against ClickHouse holding demo data.

The dashboards under ``deploy/grafana/dashboards`` are plain JSON for Grafana's official
ClickHouse plugin (``grafana-clickhouse-datasource``, SQL editor). This test turns each panel's
and each template variable's SQL into what ClickHouse would receive, the way Grafana and the
plugin do it, in the same order:

1. the plugin's frontend expands ``$__conditionalAll(condition, $var)`` (``1=1`` when the
   variable is All or empty);
2. Grafana's template service replaces variables (``$var``, ``${var}``, ``${var:format}``,
   ``[[var]]``) and its global ones (``$__from``, ``$__to``, ...); multi-value variables
   without a format become ``'a','b'`` (the plugin's format function);
3. the plugin's backend replaces its macros (``$__timeFilter(col)``, ``$__fromTime``,
   ``$__timeInterval(col)``, ``$__interval_s``, ...) with the SQL its Go code generates.

Anything left that looks like a macro or a variable fails the test, so a dashboard cannot use a
macro this test does not know. The demo (2 nodes x 2 ranks, simulated GPUs, through the real
gateway and ingest writer) provides the data, plus alert rows; each query must run and return
rows of the shape its panel needs: time series a time column (ascending) and numeric values
(string columns become series labels), tables the columns the panel's configuration names.
Every query runs over a short range (raw ``gpu_samples``) and a long one (``gpu_samples_1m``),
with multi-value variables set to All and to a single value.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from demo_data import demo_database

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
PROVISIONING_DIR = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "provisioning"
PLUGIN = "grafana-clickhouse-datasource"
DATASOURCE_UID = "runwire-clickhouse"
FORMAT_TIME_SERIES, FORMAT_TABLE = 0, 1


# ------------------------------------------------------------------------------------------
# What Grafana and the ClickHouse plugin do to a query's SQL
# ------------------------------------------------------------------------------------------


class InterpolationError(ValueError):
    """The SQL uses a macro or variable that Grafana/the plugin would not replace."""


@dataclass
class Var:
    """A template variable's current state: its selected values and whether "All" is selected."""

    values: list
    multi: bool = False
    is_all: bool = False

    @property
    def raw(self):
        """What Grafana's ``current.value`` holds."""
        if self.is_all:
            return ["$__all"]
        return self.values if self.multi else (self.values[0] if self.values else "")


@dataclass
class Context:
    time_from: dt.datetime
    time_to: dt.datetime
    interval_s: float
    variables: dict = field(default_factory=dict)


def _split_args(text: str, open_index: int) -> tuple[list[str], int]:
    """Arguments of a call whose '(' is at ``open_index``: top-level comma split (balanced
    parentheses, as the plugin's parsers do); returns (args, index after the ')')."""
    depth, start, args = 0, open_index + 1, []
    for i in range(open_index, len(text)):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(text[start:i])
                return [a.strip() for a in args], i + 1
        elif ch == "," and depth == 1:
            args.append(text[start:i])
            start = i + 1
    raise InterpolationError(f"unbalanced parentheses after position {open_index}: {text[open_index:open_index + 60]!r}")


def conditional_all(sql: str, variables: dict) -> str:
    """The plugin frontend's ``$__conditionalAll(condition, $var)``: ``1=1`` when $var is All or empty."""
    macro = "$__conditionalAll("
    while (index := sql.rfind(macro)) != -1:
        args, end = _split_args(sql, index + len(macro) - 1)
        if len(args) != 2:
            raise InterpolationError(f"$__conditionalAll takes 2 arguments, got {args}")
        name = re.search(r"(?<=\$\{)\w+(?=\})|(?<=\$)\w+", args[1])
        phrase = args[0]
        if name and name.group(0) in variables:
            raw = variables[name.group(0)].raw
            text = ",".join(raw) if isinstance(raw, list) else str(raw)  # JS Array.toString
            if text in ("", "$__all"):
                phrase = "1=1"
        sql = sql[:index] + phrase + sql[end:]
    return sql


def _format(value, fmt: str | None) -> str:
    """Grafana's variable formats; no format: the plugin's (arrays quoted and joined)."""
    values = value if isinstance(value, list) else None
    if fmt is None:
        return "'" + "','".join(values) + "'" if values is not None else str(value)
    if fmt == "singlequote":
        quote = lambda v: "'" + str(v).replace("'", "\\'") + "'"  # noqa: E731
    elif fmt == "doublequote":
        quote = lambda v: '"' + str(v).replace('"', '\\"') + '"'  # noqa: E731
    elif fmt == "sqlstring":
        quote = lambda v: "'" + str(v).replace("'", "''") + "'"  # noqa: E731
    elif fmt in ("csv", "raw"):
        quote = str
    else:
        raise InterpolationError(f"variable format {fmt!r} is not modelled by this test")
    return ",".join(quote(v) for v in values) if values is not None else quote(value)


_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")


def template_variables(sql: str, ctx: Context) -> str:
    """Grafana's templateSrv.replace with the plugin's format function."""
    from_ms = int(ctx.time_from.timestamp() * 1000)
    to_ms = int(ctx.time_to.timestamp() * 1000)
    builtins = {"__from": str(from_ms), "__to": str(to_ms), "__interval_ms": str(int(ctx.interval_s * 1000)),
                "__range_s": str((to_ms - from_ms) // 1000), "__range_ms": str(to_ms - from_ms)}

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(6)
        if match.group(5):
            raise InterpolationError(f"field path in variable {match.group(0)!r} is not modelled by this test")
        if name in builtins:
            return builtins[name]
        var = ctx.variables.get(name)
        if var is None:
            return match.group(0)  # unknown: Grafana leaves it alone (macros are handled later)
        value = var.values if (var.multi or var.is_all) else (var.values[0] if var.values else "")
        return _format(value, fmt)

    return _VARIABLE.sub(replace, sql)


def _datetime(t: dt.datetime) -> str:
    return f"toDateTime({int(t.timestamp())})"


def _datetime64(t: dt.datetime) -> str:
    return f"fromUnixTimestamp64Milli({int(t.timestamp() * 1000)})"


def _date(t: dt.datetime) -> str:
    return f"toDate('{t.astimezone(dt.timezone.utc):%Y-%m-%d}')"


def _one(name, args):
    if len(args) != 1:
        raise InterpolationError(f"$__{name} expects 1 argument, received {len(args)}")
    return args[0]


def _interval_seconds(ctx: Context) -> int:
    return int(max(ctx.interval_s, 1))


# The plugin's backend macros (pkg/macros/macros.go), with the SQL it generates.
MACROS = {
    "fromTime": lambda a, c: _datetime(c.time_from),
    "toTime": lambda a, c: _datetime(c.time_to),
    "fromTime_ms": lambda a, c: _datetime64(c.time_from),
    "toTime_ms": lambda a, c: _datetime64(c.time_to),
    "timeFilter": lambda a, c: (lambda col: f"{col} >= {_datetime(c.time_from)} AND {col} <= {_datetime(c.time_to)}")(
        _one("timeFilter", a)),
    "timeFilter_ms": lambda a, c: (lambda col: f"{col} >= {_datetime64(c.time_from)} AND {col} <= {_datetime64(c.time_to)}")(
        _one("timeFilter_ms", a)),
    "dateFilter": lambda a, c: (lambda col: f"{col} >= {_date(c.time_from)} AND {col} <= {_date(c.time_to)}")(
        _one("dateFilter", a)),
    "timeInterval": lambda a, c: f"toStartOfInterval(toDateTime({_one('timeInterval', a)}), "
                                 f"INTERVAL {_interval_seconds(c)} second)",
    "timeInterval_ms": lambda a, c: f"toStartOfInterval(toDateTime64({_one('timeInterval_ms', a)}, 3), "
                                    f"INTERVAL {max(int(c.interval_s * 1000), 1)} millisecond)",
    "interval_s": lambda a, c: str(_interval_seconds(c)),
}


def backend_macros(sql: str, ctx: Context) -> str:
    """The plugin backend (sqlds): ``$__name`` at a word boundary, optional balanced argument list."""
    for name, expand in MACROS.items():
        pattern = re.compile(r"\$__" + re.escape(name) + r"\b")
        while (match := pattern.search(sql)) is not None:
            args, end = [], match.end()
            if sql.startswith("(", end):
                args, end = _split_args(sql, end)
            sql = sql[:match.start()] + expand(args, ctx) + sql[end:]
    return sql


def render(sql: str, ctx: Context) -> str:
    """The SQL ClickHouse receives for a panel's ``rawSql``; raises on anything left unreplaced."""
    sql = conditional_all(sql, ctx.variables)
    sql = template_variables(sql, ctx)
    sql = backend_macros(sql, ctx)
    left = re.findall(r"\$__\w+|\$\{[^}]*\}|\$\w+|\[\[\w+(?::\w+)?\]\]", sql)
    if left:
        raise InterpolationError(f"unknown macro or variable {left} (not replaced by Grafana or the plugin)")
    return sql


# ------------------------------------------------------------------------------------------
# The interpolation itself (no server): what the plugin's own tests expect
# ------------------------------------------------------------------------------------------


def _ctx(**variables) -> Context:
    return Context(dt.datetime.fromtimestamp(1415792726, dt.timezone.utc),
                   dt.datetime.fromtimestamp(1447328726, dt.timezone.utc), 30.0, variables)


def test_macros_expand_like_the_plugin():
    ctx = _ctx()
    assert render("WHERE $__timeFilter(ts)", ctx) == \
        "WHERE ts >= toDateTime(1415792726) AND ts <= toDateTime(1447328726)"
    assert render("$__fromTime $__toTime", ctx) == "toDateTime(1415792726) toDateTime(1447328726)"
    assert render("$__timeInterval(ts) AS t, $__interval_s", ctx) == \
        "toStartOfInterval(toDateTime(ts), INTERVAL 30 second) AS t, 30"
    assert render("$__timeFilter_ms(ts)", ctx) == \
        "ts >= fromUnixTimestamp64Milli(1415792726000) AND ts <= fromUnixTimestamp64Milli(1447328726000)"


def test_variables_and_conditional_all():
    ctx = _ctx(project=Var(["o'brien"]), host=Var(["a", "b"], multi=True, is_all=True),
               rank=Var(["3"], multi=True))
    assert render("p = ${project:singlequote}", ctx) == "p = 'o\\'brien'"
    assert render("p = '$project'", ctx) == "p = 'o'brien'"
    assert render("$__conditionalAll(host IN (${host:singlequote}), $host)", ctx) == "1=1"
    assert render("$__conditionalAll(rank IN (${rank:singlequote}), $rank)", ctx) == "rank IN ('3')"
    assert render("host IN ($host)", ctx) == "host IN ('a','b')"
    with pytest.raises(InterpolationError, match="__nope"):
        render("SELECT $__nope(ts)", ctx)
    with pytest.raises(InterpolationError, match="missing"):
        render("SELECT ${missing}", ctx)


# ------------------------------------------------------------------------------------------
# Dashboards and provisioning files
# ------------------------------------------------------------------------------------------


# The pipeline-health dashboard charts Prometheus metrics; tests/integration/test_monitoring.py
# checks that every metric it names is served.
PROMETHEUS_DASHBOARDS = ("pipeline.json",)
SQL_DASHBOARD_FILES = sorted(p.name for p in DASHBOARD_DIR.glob("*.json") if p.name not in PROMETHEUS_DASHBOARDS)


def _dashboards() -> dict[str, dict]:
    assert SQL_DASHBOARD_FILES, f"no dashboards in {DASHBOARD_DIR}"
    return {name: json.loads((DASHBOARD_DIR / name).read_text()) for name in SQL_DASHBOARD_FILES}


def _panels(dashboard: dict):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def _query_panels(dashboard: dict):
    return [p for p in _panels(dashboard) if p["type"] != "row"]


def test_dashboards_are_wired_to_the_provisioned_datasource():
    provisioned = (PROVISIONING_DIR / "datasources" / "clickhouse.yaml").read_text()
    assert f"uid: {DATASOURCE_UID}" in provisioned and f"type: {PLUGIN}" in provisioned
    assert re.search(r"password:\s*\$\{?\w+\}?\s*$", provisioned, re.M), "password must come from an env var"
    uids = set()
    for name, dashboard in _dashboards().items():
        assert dashboard["uid"] not in uids, f"{name}: duplicate uid"
        uids.add(dashboard["uid"])
        ids = [p["id"] for p in _panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in _query_panels(dashboard):
            assert panel["datasource"] == {"type": PLUGIN, "uid": DATASOURCE_UID}, (name, panel["title"])
            assert len(panel["targets"]) >= 1
            for t in panel["targets"]:
                assert t["datasource"] == panel["datasource"]
                assert t["editorType"] == "sql" and t["rawSql"].strip(), (name, panel["title"])
                assert t["format"] in (FORMAT_TIME_SERIES, FORMAT_TABLE), (name, panel["title"])
                assert t["queryType"] == ("timeseries" if t["format"] == FORMAT_TIME_SERIES else "table")
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query":
                assert var["datasource"] == {"type": PLUGIN, "uid": DATASOURCE_UID}
                assert var["query"]["editorType"] == "sql" and var["query"]["rawSql"].strip()


# ------------------------------------------------------------------------------------------
# Demo data
# ------------------------------------------------------------------------------------------

RUN_ID = f"grafana-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def demo(clickhouse_url):
    """A fresh database holding one demo run (2 nodes x 2 ranks, ~3 s) and two alerts."""
    with demo_database(clickhouse_url, "rw_grafana", [(RUN_ID, 3.0)]) as client:
        _insert_alerts(client, RUN_ID)
        yield client


def _insert_alerts(client, run_id: str) -> None:
    gpu = client.query("SELECT host, gpu_uuid, max(ts) FROM gpu_samples WHERE run_id = {r:String} "
                       "GROUP BY host, gpu_uuid ORDER BY host, gpu_uuid LIMIT 1", parameters={"r": run_id}).result_rows[0]
    now = dt.datetime.now(dt.timezone.utc)
    columns = ["project", "alert_id", "rule", "severity", "state", "run_id", "host", "gpu_uuid", "rank", "value",
               "message", "started_at", "resolved_at", "updated_at"]
    client.insert("alerts", [
        ["demo", "a-temp", "gpu_temperature_critical", "critical", "firing", run_id, gpu[0], gpu[1], None, 91.0,
         "GPU temperature 91 C >= 85 C for 60 s", now - dt.timedelta(seconds=30), None, now],
        ["demo", "a-strag", "straggler", "warning", "resolved", run_id, "node-1", "", 3, 1.7,
         "rank 3 step time 1.7x the run median", now - dt.timedelta(minutes=3), now - dt.timedelta(minutes=1), now],
    ], column_names=columns)


# ------------------------------------------------------------------------------------------
# Running every query
# ------------------------------------------------------------------------------------------

_TIME_TYPE = re.compile(r"^(Nullable\()?DateTime(64)?\b")
_NUMBER_TYPE = re.compile(r"^(Nullable\()?(U?Int\d+|Float\d+|Decimal|Bool)")
_STRING_TYPE = re.compile(r"^(Nullable\()?(LowCardinality\()?(Nullable\()?(String|FixedString)")


def _ranges() -> dict[str, tuple[dt.datetime, dt.datetime]]:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    later = now + dt.timedelta(minutes=5)
    return {"15m": (now - dt.timedelta(minutes=15), later), "2d": (now - dt.timedelta(days=2), later)}


def _resolve_variables(client, dashboard: dict, time_from, time_to, all_selected: bool) -> Context:
    """Evaluate the dashboard's variables in order, as Grafana does on load."""
    range_s = (time_to - time_from).total_seconds()
    ctx = Context(time_from, time_to, max(range_s / 1000, 1))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "textbox":
            ctx.variables[var["name"]] = Var([var["query"]])
            continue
        assert var["type"] == "query", f"variable type {var['type']} not modelled"
        sql = render(var["query"]["rawSql"], ctx)
        result = client.query(sql)
        assert 1 <= len(result.column_names) <= 2, f"variable {var['name']}: value (and text) columns expected"
        values = [str(row[0]) for row in result.result_rows]
        assert values, f"variable {var['name']} has no values on demo data:\n{sql}"
        if var.get("multi") and var.get("includeAll") and all_selected:
            ctx.variables[var["name"]] = Var(values, multi=True, is_all=True)
            continue
        wanted = (var.get("current") or {}).get("value")
        chosen = wanted if isinstance(wanted, str) and wanted in values else values[0]
        ctx.variables[var["name"]] = Var([chosen], multi=bool(var.get("multi")))
    return ctx


def _referenced_columns(panel: dict) -> set[str]:
    names = {o["matcher"]["options"] for o in panel["fieldConfig"].get("overrides", [])
             if o["matcher"]["id"] == "byName"}
    options = panel.get("options", {})
    if options.get("xField"):
        names.add(options["xField"])
    fields = options.get("reduceOptions", {}).get("fields", "")
    if fields and not fields.startswith("/"):
        names.add(fields)
    return names


def _check_shape(panel: dict, target: dict, result, sql: str) -> None:
    where = f"panel {panel['title']!r}:\n{sql}"
    columns, types = result.column_names, [t.name for t in result.column_types]
    assert result.result_rows, f"no rows on demo data; {where}"
    if target["format"] == FORMAT_TIME_SERIES:
        time_columns = [i for i, t in enumerate(types) if _TIME_TYPE.match(t)]
        assert time_columns, f"time series without a time column ({types}); {where}"
        numeric = [c for c, t in zip(columns, types) if _NUMBER_TYPE.match(t)]
        assert numeric, f"time series without numeric values ({types}); {where}"
        for c, t in zip(columns, types):
            assert _TIME_TYPE.match(t) or _NUMBER_TYPE.match(t) or _STRING_TYPE.match(t), \
                f"column {c} of type {t} is neither time, number nor label; {where}"
        times = [row[time_columns[0]] for row in result.result_rows]
        assert times == sorted(times), f"long time series must be sorted by time (the plugin converts long to wide); {where}"
    else:
        missing = _referenced_columns(panel) - set(columns)
        assert not missing, f"the panel configures columns {sorted(missing)} the query does not return {columns}; {where}"
        x_field = panel.get("options", {}).get("xField")
        if x_field and panel["type"] == "trend":
            assert _NUMBER_TYPE.match(types[columns.index(x_field)]), f"trend x field must be numeric; {where}"


CASES = [(rng, all_selected) for rng in ("15m", "2d") for all_selected in (True, False)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dashboard_file", SQL_DASHBOARD_FILES)
def test_every_panel_query_runs_on_demo_data(demo, dashboard_file):
    dashboard = json.loads((DASHBOARD_DIR / dashboard_file).read_text())
    started, ran = time.monotonic(), 0
    for rng, all_selected in CASES:
        time_from, time_to = _ranges()[rng]
        ctx = _resolve_variables(demo, dashboard, time_from, time_to, all_selected)
        for panel in _query_panels(dashboard):
            for target in panel["targets"]:
                sql = render(target["rawSql"], ctx)
                try:
                    result = demo.query(sql)
                except Exception as e:  # noqa: BLE001 - show the SQL with the server's message
                    pytest.fail(f"{dashboard_file} / {panel['title']!r} ({rng}, all={all_selected}) failed: {e}\n{sql}")
                _check_shape(panel, target, result, sql)
                ran += 1
    assert ran >= 4 * 4, f"{dashboard_file}: only {ran} queries ran"
    assert time.monotonic() - started < 30


@pytest.mark.timeout(120)
def test_alert_panels_leave_out_alerts_that_never_fired(demo):
    """A pending alert has not fired and an inactive one never did: no alerts panel counts or
    lists them (the alert history lists the pending one with its state)."""
    now = dt.datetime.now(dt.timezone.utc)
    columns = ["project", "alert_id", "rule", "severity", "state", "run_id", "host", "gpu_uuid", "rank", "value",
               "message", "started_at", "resolved_at", "updated_at"]
    demo.insert("alerts", [
        ["demo", "never-1", "never_fired_inactive", "critical", "inactive", RUN_ID, "node-0", "", 1, 1.0,
         "cleared before it fired", now - dt.timedelta(seconds=40), now - dt.timedelta(seconds=20), now],
        ["demo", "never-2", "never_fired_pending", "warning", "pending", RUN_ID, "node-0", "", 2, 1.0,
         "not yet", now - dt.timedelta(seconds=10), None, now],
    ], column_names=columns)
    dashboard = _dashboards()["alerts.json"]
    time_from, time_to = _ranges()["15m"]
    ctx = _resolve_variables(demo, dashboard, time_from, time_to, all_selected=True)
    seen, rows = {}, {}
    for panel in _query_panels(dashboard):
        for target in panel["targets"]:
            rows[panel["title"]] = demo.query(render(target["rawSql"], ctx)).result_rows
            seen[panel["title"]] = str(rows[panel["title"]])
    assert not [title for title, text in seen.items() if "never_fired_inactive" in text]
    assert [title for title, text in seen.items() if "never_fired_pending" in text] == ["Alert history"]
    # The counts are those of the two alerts that fired.
    assert sorted(r[0] for r in rows["Alerts by rule and severity"]) == ["gpu_temperature_critical", "straggler"]
    assert sum(sum(r[1:]) for r in rows["Alerts started"]) == 2
