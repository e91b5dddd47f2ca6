"""The search_runs filter grammar (runwire.storage.filters): parsing, compiling, errors. Pure."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from runwire.storage.filters import (And, Columns, Comparison, FilterError, Key, Or, OrderKey, compile_filter,
                                     compile_order_by, parse_filter, parse_order_by, referenced_keys)


def cmp(entity, key, op, value):
    return Comparison(Key(entity, key), op, value)


LOSS = cmp("metrics", "loss", "<", 0.5)
LR = cmp("params", "lr", "=", "0.001")
TEAM = cmp("tags", "team", "=", "nlp")


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, op", [("=", "="), ("==", "="), ("!=", "!="), ("<>", "!="), ("<", "<"),
                                      ("<=", "<="), (">", ">"), (">=", ">=")])
def test_every_comparison_operator_on_metrics(text, op):
    assert parse_filter(f"metrics.loss {text} 0.5") == cmp("metrics", "loss", op, 0.5)
    assert parse_filter(f"metrics.loss{text}0.5") == cmp("metrics", "loss", op, 0.5)  # no spaces needed


@pytest.mark.parametrize("text, value", [("1", 1.0), ("-2.5", -2.5), ("+3", 3.0), (".5", 0.5), ("1e-3", 0.001),
                                         ("2.5E+2", 250.0), ("7.", 7.0)])
def test_numbers(text, value):
    assert parse_filter(f"metrics.x = {text}").value == value


@pytest.mark.parametrize("text, op, value", [
    ("params.model = 'gpt'", "=", "gpt"),
    ("params.model != 'gpt'", "!=", "gpt"),
    ("params.model LIKE 'g%'", "LIKE", "g%"),
    ("params.model like 'g%'", "LIKE", "g%"),
    ("params.model ILIKE 'G%'", "ILIKE", "G%"),
    ("params.model NOT LIKE 'g%'", "NOT LIKE", "g%"),
    ("params.model not ilike 'G%'", "NOT ILIKE", "G%"),
    ("params.model IN ('gpt', 'bert')", "IN", ("gpt", "bert")),
    ("params.model in ('gpt')", "IN", ("gpt",)),
    ("params.model NOT IN ('gpt','bert')", "NOT IN", ("gpt", "bert")),
    ("params.model IS NULL", "IS NULL", None),
    ("params.model is not null", "IS NOT NULL", None),
    ('params.model = "gpt"', "=", "gpt"),  # MLflow accepts double-quoted values too
])
def test_string_operators(text, op, value):
    assert parse_filter(text) == cmp("params", "model", op, value)


def test_entity_aliases():
    for alias in ("metric", "metrics", "METRICS"):
        assert parse_filter(f"{alias}.loss < 0.5") == LOSS
    for alias in ("param", "params", "parameter", "parameters"):
        assert parse_filter(f"{alias}.lr = '0.001'") == LR
    for alias in ("tag", "tags"):
        assert parse_filter(f"{alias}.team = 'nlp'") == TEAM
    for alias in ("attribute", "attributes", "attr", "run"):
        assert parse_filter(f"{alias}.status = 'FINISHED'") == cmp("attributes", "status", "=", "FINISHED")


@pytest.mark.parametrize("name, canonical", [("run_id", "run_id"), ("run_name", "name"), ("name", "name"),
                                             ("status", "status"), ("project", "project"), ("Status", "status")])
def test_string_attributes(name, canonical):
    assert parse_filter(f"attributes.{name} = 'x'") == cmp("attributes", canonical, "=", "x")


def test_time_attributes_take_milliseconds_or_iso_strings():
    ms = dt.datetime(2025, 1, 31, 12, tzinfo=dt.timezone.utc).timestamp() * 1000
    assert parse_filter(f"attributes.start_time > {ms:.0f}") == cmp("attributes", "start_time", ">", ms)
    for text in ("'2025-01-31T12:00:00'", "'2025-01-31 12:00:00'", "'2025-01-31T12:00:00Z'",
                 "'2025-01-31T14:00:00+02:00'"):
        assert parse_filter(f"attributes.created >= {text}") == cmp("attributes", "start_time", ">=", ms)
    assert parse_filter("attributes.end_time < '2025-02-01'").value == ms + 12 * 3600 * 1000
    assert parse_filter("attributes.end_time IS NULL") == cmp("attributes", "end_time", "IS NULL", None)
    both = parse_filter("attributes.start_time IN (1000, 2000)")
    assert both.value == (1000.0, 2000.0)


def test_and_binds_tighter_than_or_and_parentheses_override():
    assert parse_filter("metrics.loss < 0.5 or params.lr = '0.001' and tags.team = 'nlp'") == Or((LOSS, And((LR, TEAM))))
    assert parse_filter("metrics.loss < 0.5 and params.lr = '0.001' or tags.team = 'nlp'") == Or((And((LOSS, LR)), TEAM))
    assert parse_filter("(metrics.loss < 0.5 or params.lr = '0.001') and tags.team = 'nlp'") == And((Or((LOSS, LR)), TEAM))
    assert parse_filter("metrics.loss < 0.5 AND (params.lr = '0.001' OR tags.team = 'nlp')") == And((LOSS, Or((LR, TEAM))))
    assert parse_filter("((metrics.loss < 0.5))") == LOSS
    assert parse_filter("a.b = 1".replace("a.b", "metrics.loss") + " and metrics.loss < 0.5 and metrics.loss < 0.5") == \
        And((cmp("metrics", "loss", "=", 1.0), LOSS, LOSS))
    assert parse_filter("metrics.loss < 0.5 Or metrics.loss < 0.5 oR metrics.loss < 0.5") == Or((LOSS, LOSS, LOSS))


def test_keys_bare_backticked_and_double_quoted():
    assert parse_filter("params.model.layers = '24'").key == Key("params", "model.layers")
    assert parse_filter("metrics.val/loss < 1").key == Key("metrics", "val/loss")
    assert parse_filter("metrics.top-1 < 1").key == Key("metrics", "top-1")
    assert parse_filter("metrics.`val loss` < 1").key == Key("metrics", "val loss")
    assert parse_filter('metrics."val loss" < 1').key == Key("metrics", "val loss")
    assert parse_filter("tags.`mlflow.source.name` = 'x'").key == Key("tags", "mlflow.source.name")
    assert parse_filter("params.`it``s` = 'x'").key == Key("params", "it``s")  # verbatim, as MLflow
    assert parse_filter("metrics.3d_iou > 0.5").key == Key("metrics", "3d_iou")


def test_string_escapes_keep_the_string_open_but_stay_verbatim_as_in_mlflow():
    assert parse_filter("params.a = 'it''s'").value == "it''s"
    assert parse_filter(r"params.a = 'it\'s'").value == r"it\'s"
    assert parse_filter(r"params.a = 'back\\slash'").value == r"back\\slash"
    assert parse_filter('params.a = "say ""hi"""').value == 'say ""hi""'
    assert parse_filter("params.a = ''").value == ""
    assert parse_filter("params.a = ' and or ( ) '").value == " and or ( ) "


def test_blank_filters():
    assert parse_filter("") is None and parse_filter("   \n") is None and parse_filter(None) is None
    assert compile_filter("") == ("1", {})


# --- errors ----------------------------------------------------------------------------------


def caret(err: FilterError) -> int:
    lines = str(err).splitlines()
    assert lines[-2].startswith("  ") and lines[-1].strip() == "^"
    return lines[-1].index("^") - 2


@pytest.mark.parametrize("text, position, message", [
    ("metrics.loss lt 0.3", 13, "expected a comparison operator"),
    ("metrics.loss < ", 15, "unexpected end of filter"),
    ("metrics.loss", 12, "expected a comparison operator"),
    ("metrics.loss < 'low'", 15, "is a number"),
    ("metrics.loss LIKE 'x%'", 13, "LIKE compares strings"),
    ("params.lr < '0.1'", 10, "does not compare strings"),
    ("params.lr = 0.1 and", 19, "unexpected end of filter"),
    ("params.lr = abc", 12, "expected a quoted string or a number"),
    ("params.lr = `abc`", 12, "back ticks quote names"),
    ("params.lr LIKE 5", 15, "needs a quoted string"),
    ("params.lr = 'abc", 12, "unterminated ' quote"),
    ("params.`lr = 'abc'", 7, "unterminated ` quote"),
    ("(metrics.a < 1", 14, "expected ')'"),
    ("metrics.a < 1)", 13, "unbalanced ')'"),
    ("()", 1, "empty parentheses"),
    ("metrics.a < 1 metrics.b < 2", 14, "expected AND, OR"),
    ("metrics.a < 1 and or metrics.b < 2", 18, "expected a comparison"),
    ("loss < 1", 0, "unknown attribute 'loss'"),
    ("`val loss` < 1", 0, "unknown attribute 'val loss'"),
    ("foo.bar = 1", 0, "unknown entity 'foo'"),
    ("`foo`.bar = 1", 0, "unknown entity 'foo'"),
    ("datasets.size = 'x'", 9, "unknown dataset field 'size'"),
    ("datasets.name IS NULL", 14, "datasets take"),
    ("datasets.name < 'x'", 14, "does not compare strings"),
    ("attributes.colour = 'red'", 11, "unknown attribute 'colour'"),
    ("attributes.status = 1", 20, "is a string: quote the value"),
    ("attributes.start_time LIKE '2025%'", 22, "LIKE compares strings"),
    ("attributes.start_time > 'yesterday'", 24, "is not a time"),
    ("metrics. < 1", 8, "expected a name after metrics."),
    ("metrics.a IN 1", 13, "expected '(' after IN"),
    ("metrics.a IN (1; 2)", 15, "unexpected character ';'"),
    ("metrics.a IN (1 2)", 16, "expected ',' or ')'"),
    ("metrics.a IN (1, 'x')", 17, "mixes strings and numbers"),
    ("metrics.a IS 5", 13, "expected NULL after IS"),
    ("metrics.a NOT = 5", 14, "expected LIKE, ILIKE or IN after NOT"),
    ("metrics.a = 1 && metrics.b = 2", 14, "unexpected character '&'"),
    ("metrics.a = 1; DROP TABLE runs", 13, "unexpected character ';'"),
])
def test_errors_point_at_the_offending_token(text, position, message):
    with pytest.raises(FilterError) as err:
        parse_filter(text)
    assert err.value.position == position, str(err.value)
    assert message in err.value.reason
    assert caret(err.value) == position
    assert err.value.text == text
    assert f"(position {position})" in str(err.value)


def test_error_caret_stays_aligned_across_newlines_and_tabs():
    text = "metrics.a < 1\n\tand\tbogus"
    with pytest.raises(FilterError) as err:
        parse_filter(text)
    assert err.value.position == text.index("bogus")
    assert str(err.value).splitlines()[-2] == "  metrics.a < 1  and bogus"
    assert caret(err.value) == text.index("bogus")


def test_deep_nesting_is_an_error_not_a_crash():
    assert parse_filter("(" * 60 + "metrics.a < 1" + ")" * 60) == cmp("metrics", "a", "<", 1.0)
    text = "(" * 1000 + "metrics.a < 1" + ")" * 1000
    with pytest.raises(FilterError, match="nested deeper than") as err:
        parse_filter(text)
    assert err.value.position == 64
    with pytest.raises(TypeError):
        parse_filter(42)


def test_filter_error_is_a_value_error():
    assert issubclass(FilterError, ValueError)


# --- compiling -------------------------------------------------------------------------------


def test_compile_binds_keys_and_values_as_numbered_parameters():
    sql, params = compile_filter("metrics.val_loss < 0.3 and params.lr = '0.001' and tags.team = 'nlp' "
                                 "and attributes.status = 'FINISHED'")
    assert sql == ("((mapContains(metrics, {f0:String}) AND metrics[{f0:String}] < {f1:Float64}) AND "
                   "(mapContains(params, {f2:String}) AND params[{f2:String}] = {f3:String}) AND "
                   "(mapContains(tags, {f4:String}) AND tags[{f4:String}] = {f5:String}) AND (status = {f6:String}))")
    assert params == {"f0": "val_loss", "f1": 0.3, "f2": "lr", "f3": "0.001", "f4": "team", "f5": "nlp", "f6": "FINISHED"}


def test_compile_or_parentheses_and_list_operators():
    sql, params = compile_filter("(metrics.a >= 1 or params.m IN ('x', 'y')) and tags.t NOT LIKE 'z%'")
    assert sql == ("(((mapContains(metrics, {f0:String}) AND metrics[{f0:String}] >= {f1:Float64}) OR "
                   "(mapContains(params, {f2:String}) AND params[{f2:String}] IN ({f3:String}, {f4:String}))) AND "
                   "(mapContains(tags, {f5:String}) AND NOT like(tags[{f5:String}], {f6:String})))")
    assert params == {"f0": "a", "f1": 1.0, "f2": "m", "f3": "x", "f4": "y", "f5": "t", "f6": "z%"}


def test_compile_presence_numeric_params_and_attributes():
    assert compile_filter("tags.x IS NULL")[0] == "(NOT mapContains(tags, {f0:String}))"
    assert compile_filter("metrics.x IS NOT NULL")[0] == "(mapContains(metrics, {f0:String}))"
    assert compile_filter("params.lr < 0.01") == (
        "(mapContains(params, {f0:String}) AND toFloat64OrNull(params[{f0:String}]) < {f1:Float64})",
        {"f0": "lr", "f1": 0.01})
    assert compile_filter("attributes.run_name ILIKE '%x%'") == ("(ilike(name, {f0:String}))", {"f0": "%x%"})
    assert compile_filter("attributes.start_time >= 1000") == (
        "(toUnixTimestamp64Milli(start_time) >= {f0:Float64})", {"f0": 1000.0})
    assert compile_filter("attributes.end_time IS NULL")[0] == "(end_time IS NULL)"
    assert compile_filter("attributes.name IS NULL")[0] == "(empty(name))"
    assert compile_filter("attributes.run_id NOT IN ('a')") == ("(run_id NOT IN ({f0:String}))", {"f0": "a"})


@pytest.mark.parametrize("text", [
    "params.lr = '0.001'' OR 1=1 --'",
    "params.lr = '\\' OR 1=1 --'",
    "params.`lr') OR 1=1 --` = 'x'",
    'tags."t\'] OR 1 --" = \'x\'',
    "attributes.status IN ('a'', ''b', 'c) OR (1')",
    "metrics.`x}{f0:String}` > 1",
    "params.a LIKE '%'' UNION SELECT * FROM system.users --'",
])
def test_injection_attempts_end_up_as_parameters(text):
    sql, params = compile_filter(text)
    # Nothing from the filter is in the SQL: only column names, operators and placeholders.
    assert "'" not in sql and "--" not in sql and "UNION" not in sql and "OR 1" not in sql
    assert re.fullmatch(r"[A-Za-z0-9_(){}:,.<>=!\[\] ]+", sql), sql
    placeholders = re.findall(r"\{(\w+):(\w+)\}", sql)
    assert {name for name, _ in placeholders} == set(params)
    node = parse_filter(text)
    values = node.value if isinstance(node.value, tuple) else (node.value,)
    assert set(values) <= set(params.values())
    if node.key.entity != "attributes":  # attributes are fixed column names
        assert node.key.key in params.values()


def test_parameter_numbering_continues_after_existing_names():
    params = {"f0": "taken", "limit": 10}
    sql, out = compile_filter("metrics.a < 1", params=params)
    assert out is params and params["f0"] == "taken"
    assert sql == "(mapContains(metrics, {f1:String}) AND metrics[{f1:String}] < {f2:Float64})"
    sql, _ = compile_filter("tags.a = 'x'", params={}, prefix="w")
    assert "{w0:String}" in sql and "{w1:String}" in sql


def test_compile_with_other_columns():
    columns = Columns(metrics="m.last", params="p.kv", tags="t.kv", attributes={
        "run_id": "r.run_id", "name": "r.name", "status": "r.status", "project": "r.project",
        "start_time": "r.start_time", "end_time": "r.end_time"})
    sql, _ = compile_filter("metrics.a < 1 or attributes.status = 'X' or params.b = 'y'", columns=columns)
    assert "mapContains(m.last," in sql and "r.status = " in sql and "p.kv[" in sql
    with pytest.raises(ValueError):
        Columns(metrics="metrics; DROP TABLE runs")


# --- order_by --------------------------------------------------------------------------------


def test_parse_order_by():
    assert parse_order_by(["metrics.val_loss ASC", "attributes.start_time DESC", "params.lr", "tags.`a b` desc"]) == [
        OrderKey(Key("metrics", "val_loss"), True), OrderKey(Key("attributes", "start_time"), False),
        OrderKey(Key("params", "lr"), True), OrderKey(Key("tags", "a b"), False)]
    assert parse_order_by(None) == [] and parse_order_by([]) == []
    assert parse_order_by("attributes.created DESC") == [OrderKey(Key("attributes", "start_time"), False)]


@pytest.mark.parametrize("clause, position, message", [
    ("metrics.loss sideways", 13, "expected ASC, DESC"),
    ("loss DESC", 0, "unknown attribute 'loss'"),
    ("'loss' DESC", 0, "expected metrics.NAME"),
    ("", 0, "empty order_by clause"),
    ("metrics.loss ASC DESC", 17, "expected ASC, DESC"),
    ("attributes.nope", 11, "unknown attribute"),
])
def test_order_by_errors(clause, position, message):
    with pytest.raises(FilterError) as err:
        parse_order_by([clause])
    assert err.value.position == position and message in err.value.reason
    assert caret(err.value) == position


def test_compile_order_by_puts_missing_values_last():
    terms, params = compile_order_by(["metrics.val_loss DESC", "params.lr", "attributes.start_time DESC"])
    assert terms == [
        "if(mapContains(metrics, {o0:String}) AND NOT isNaN(metrics[{o0:String}]), metrics[{o0:String}], "
        "CAST(NULL, 'Nullable(Float64)')) DESC NULLS LAST",
        "if(mapContains(params, {o1:String}), params[{o1:String}], NULL) ASC NULLS LAST",
        "start_time DESC NULLS LAST"]
    assert params == {"o0": "val_loss", "o1": "lr"}


def test_referenced_keys():
    node = parse_filter("(metrics.a < 1 or params.b = 'x') and tags.c IS NULL and attributes.run_name = 'n'")
    used = referenced_keys(node, parse_order_by(["metrics.z DESC", "attributes.start_time"]))
    assert used == {"metrics": {"a", "z"}, "params": {"b"}, "tags": {"c"}, "attributes": {"name", "start_time"},
                    "datasets": set()}
    assert referenced_keys(None) == {"metrics": set(), "params": set(), "tags": set(), "attributes": set(), "datasets": set()}


# --- MLflow's grammar: entity-less attributes, back-ticked entities, datasets, unicode ------


@pytest.mark.parametrize("text, key", [
    ("`metric`.a > 1", Key("metrics", "a")),
    ("`params`.`a.b` = 'x'", Key("params", "a.b")),
    ("status = 'FINISHED'", Key("attributes", "status")),
    ("run_name LIKE 'abc%'", Key("attributes", "name")),
    ("`run name` = 'x'", Key("attributes", "name")),
    ("`Run name` = 'x'", Key("attributes", "name")),
    ("attributes.`Run Name` = 'x'", Key("attributes", "name")),
    ('attributes."run name" = \'x\'', Key("attributes", "name")),
    ("Created > 5", Key("attributes", "start_time")),
    ("attributes.user_id = 'u'", Key("attributes", "user_id")),
    ("attribute.artifact_uri = 'x'", Key("attributes", "artifact_uri")),
    ("params.日本 = 'x'", Key("params", "日本")),
    ("tags.größe = 'x'", Key("tags", "größe")),
    ("datasets.name LIKE '%x'", Key("datasets", "name")),
    ("datasets.digest IN ('a', 'b')", Key("datasets", "digest")),
    ("dataset.context = 'train'", Key("datasets", "context")),
])
def test_mlflow_key_forms(text, key):
    assert parse_filter(text).key == key


MLFLOW_ACCEPTED = [
    "metrics.`a b` > 1 and `metric`.c <= -1.5e3",
    "params.x = 'it''s' and tags.\"a b\" = \"v\"",
    r"params.x = 'it\'s' and params.y = 'a%\\b'",
    "`Run name` LIKE 'bert%' and status != 'FAILED'",
    "run_id IN ('a', 'b') and attributes.created > 5",
    "datasets.name ILIKE '%Mnist%' and datasets.context = 'train'",
    "params.日本 = '語' and tags.a IS NOT NULL",
]


@pytest.mark.parametrize("text", MLFLOW_ACCEPTED)
def test_values_and_keys_match_mlflows_own_parser(text):
    """Each comparison reads as MLflow's server reads it (mlflow.utils.search_utils)."""
    from mlflow.utils.search_utils import SearchUtils  # the dev extra pins mlflow

    theirs = SearchUtils.parse_search_filter(text)
    node = parse_filter(text)
    ours = list(node.terms) if isinstance(node, And) else [node]
    assert len(ours) == len(theirs)
    entity = {"metric": "metrics", "parameter": "params", "tag": "tags", "attribute": "attributes",
              "dataset": "datasets"}
    for mine, their in zip(ours, theirs):
        assert mine.key.entity == entity[their["type"]]
        if mine.key.entity != "attributes":
            assert mine.key.key == their["key"]
        assert mine.op == their["comparator"]
        value = their["value"]
        if mine.key.entity == "metrics" or isinstance(value, (int, float)):
            value = float(value)
        elif isinstance(value, tuple):
            value = tuple(value)
        assert mine.value == value


def test_compile_datasets_and_mlflow_attributes():
    columns = Columns(attributes={"run_id": "run_id", "name": "name", "status": "status", "user_id": "user_id",
                                  "start_time": "start_time", "end_time": "end_time"},
                      datasets={"name": "ds_name", "digest": "ds_digest", "context": "ds_context"})
    sql, params = compile_filter("datasets.name IN ('a', 'b') and user_id = 'me'", columns=columns)
    assert sql == "((arrayExists(x -> x IN ({f0:String}, {f1:String}), ds_name)) AND (user_id = {f2:String}))"
    assert params == {"f0": "a", "f1": "b", "f2": "me"}
    sql, _ = compile_filter("datasets.context LIKE 'tr%'", columns=columns)
    assert sql == "(arrayExists(x -> like(x, {f0:String}), ds_context))"
    with pytest.raises(FilterError, match="attribute 'user_id' is not stored"):
        compile_filter("attributes.user_id = 'me'")
    with pytest.raises(FilterError, match="datasets are not stored"):
        compile_filter("datasets.name = 'x'")
    assert compile_order_by(["`Run name` DESC", "created"], columns=columns)[0] == [
        "name DESC NULLS LAST", "start_time ASC NULLS LAST"]
