"""MLflow's ``search_runs`` filter grammar, plus ``or`` and parentheses, compiled to ClickHouse
(pure, no I/O).

Grammar (keywords are case-insensitive; ``and`` binds tighter than ``or``)::

    filter     := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := term ("and" term)*
    term       := "(" or_expr ")" | comparison
    comparison := key op value
                | key ["not"] ("like" | "ilike") string
                | key ["not"] "in" "(" value ("," value)* ")"
                | key "is" ["not"] "null"
    key        := entity "." name | attribute
    entity     := (metrics | metric | params | param | parameters | parameter | tags | tag
                | attributes | attribute | attr | run | datasets | dataset), bare or `back ticked`
    name       := bare | `back ticked` | "double quoted"
    attribute  := bare | `back ticked`       (an attribute name without "attributes.")
    op         := "=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    value      := 'single quoted' | "double quoted" | number

A bare name may contain letters (any script: ``params.学习率``), digits, ``_ . - /``
(``params.model.depth``); anything else (spaces, quotes) needs back ticks or double quotes:
``metrics.`val loss```. An attribute may be named without its entity, as in MLflow:
``status = 'FINISHED'``, ```Run name` LIKE 'bert%'``.

Strings, as MLflow's server reads them: the text between the quotes is the value, verbatim.
``''`` and a backslash before the quote keep a string open but are not unescaped, so
``'it''s'`` matches the stored value ``it''s``, never ``it's`` (MLflow compares the same way;
a value that holds its own quote character is best matched with LIKE and ``%``). The same holds
for back-ticked and double-quoted names.

Semantics:

* ``metrics.NAME`` is the run's LAST value of that metric: the value at the highest step
  logged by any rank (ties between ranks go to the lowest rank). It compares with numbers.
  Last, not min or best, because that is what MLflow's ``search_runs`` compares (its
  ``latest_metrics``) and what a finished run reports.
* ``params.KEY`` and ``tags.KEY`` are strings, compared as strings (=, !=, LIKE, ILIKE, IN) as
  in MLflow. Extension: compared with a number (``params.lr < 0.01``) the stored string is read
  as a number; values that are not numbers do not match.
* ``attributes``: ``run_id``, ``run_name`` (aliases ``name``, ``run name``, ``Run name``),
  ``status``, ``project``, ``user_id``, ``artifact_uri`` (strings), ``start_time`` and
  ``end_time`` (alias ``created`` for ``start_time``): compared with a number (milliseconds
  since the epoch, as in MLflow) or an ISO-8601 string (``'2025-01-31'``,
  ``'2025-01-31T12:00:00'``; UTC unless it carries an offset). Which attributes a query can
  read depends on its :class:`Columns` (``user_id``, ``artifact_uri`` and datasets exist for
  runs logged through the MLflow API).
* ``datasets.name``, ``datasets.digest``, ``datasets.context`` (MLflow's ``log_input``): a run
  matches when ANY of its datasets satisfies the comparison (=, !=, LIKE, ILIKE, IN, NOT IN).

Where runwire deliberately differs from MLflow's server (extensions; a filter MLflow accepts
means the same here): ``or`` and parentheses; ``IS NULL`` on metrics; IN on every string
attribute and on params/tags (MLflow: run_id only); params/tags compared with numbers; times
as ISO strings; ``-`` and ``/`` in bare names; ``==`` and ``<>``; keywords in any case.
* A run that lacks the metric, param or tag matches no comparison on it, ``!=`` and
  ``NOT IN`` included (as in MLflow); ``IS NULL`` / ``IS NOT NULL`` test for presence.

Every value and every metric/param/tag key reaches ClickHouse as a numbered server-side
parameter (``{f0:String}``); the only identifiers written into the SQL are the fixed column
names in :class:`Columns`. A malformed filter raises :class:`FilterError`, whose message points
at the offending token with its position and a caret line.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Union

__all__ = [
    "FilterError", "Key", "Comparison", "And", "Or", "OrderKey", "Columns",
    "parse_filter", "parse_order_by", "compile_filter", "compile_order_by", "referenced_keys",
]

METRICS, PARAMS, TAGS, ATTRIBUTES, DATASETS = "metrics", "params", "tags", "attributes", "datasets"

_ENTITIES = {
    "metric": METRICS, "metrics": METRICS,
    "param": PARAMS, "params": PARAMS, "parameter": PARAMS, "parameters": PARAMS,
    "tag": TAGS, "tags": TAGS,
    "attribute": ATTRIBUTES, "attributes": ATTRIBUTES, "attr": ATTRIBUTES, "run": ATTRIBUTES,
    "dataset": DATASETS, "datasets": DATASETS,
}

# attribute name (and aliases) -> (canonical name, kind)
_ATTRIBUTES = {
    "run_id": ("run_id", "string"),
    "run_name": ("name", "string"), "name": ("name", "string"), "run name": ("name", "string"),
    "status": ("status", "string"),
    "project": ("project", "string"),
    "user_id": ("user_id", "string"),
    "artifact_uri": ("artifact_uri", "string"),
    "start_time": ("start_time", "time"), "created": ("start_time", "time"),
    "end_time": ("end_time", "time"),
}

_DATASET_KEYS = ("name", "digest", "context")

_COMPARATORS = {"=", "!=", "<", "<=", ">", ">="}
_STRING_OPS = {"=", "!=", "LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE", "IN", "NOT IN", "IS NULL", "IS NOT NULL"}
_KEYWORDS = {"and", "or", "not", "in", "like", "ilike", "is", "null", "asc", "desc"}


class FilterError(ValueError):
    """A malformed filter or order_by clause.

    Attributes: ``reason`` (the message alone), ``text`` (the clause), ``position`` (0-based
    offset of the offending token in ``text``). ``str()`` adds the position and a caret line::

        expected a comparison operator after metrics.loss, found 'lt' (position 13)
          metrics.loss lt 0.3
                       ^
    """

    def __init__(self, reason: str, text: str, position: int) -> None:
        self.reason = reason
        self.text = text
        self.position = max(0, min(position, len(text)))
        super().__init__(self._render())

    def _render(self) -> str:
        # One display line: control characters become spaces so the caret stays aligned.
        line = re.sub(r"[\r\n\t\f\v]", " ", self.text)
        return f"{self.reason} (position {self.position})\n  {line}\n  {' ' * self.position}^"


# --- AST -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """``entity.key``: entity is one of metrics, params, tags, attributes (canonical); for
    attributes ``key`` is the canonical attribute name."""

    entity: str
    key: str
    position: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f"{self.entity}.{self.key}"


Value = Union[str, float, None, tuple]


@dataclass(frozen=True)
class Comparison:
    """``key op value``. op is one of = != < <= > >= LIKE ILIKE NOT LIKE NOT ILIKE IN NOT IN
    IS NULL IS NOT NULL; value is a str, a float, a tuple of them (IN) or None (IS NULL)."""

    key: Key
    op: str
    value: Value
    position: int = field(default=0, compare=False)


@dataclass(frozen=True)
class And:
    terms: tuple


@dataclass(frozen=True)
class Or:
    terms: tuple


Node = Union[Comparison, And, Or]


@dataclass(frozen=True)
class OrderKey:
    key: Key
    ascending: bool = True


# --- tokens ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # key, string, number, op, word, lparen, rparen, comma, backtick, end
    value: object
    position: int
    text: str


_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[^\W\d]\w*")  # \w is Unicode-aware: letters of any script
_BARE_KEY = re.compile(r"\w(?:[\w.\-/]*[\w\-/])?")
_OPERATORS = ("!=", "<>", "<=", ">=", "==", "=", "<", ">")


def _describe(token: _Token) -> str:
    return "the end of the filter" if token.kind == "end" else repr(token.text)


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The text quoted at text[start] (' " or `), verbatim, and the offset after its closing
    quote. As MLflow's tokenizer (sqlparse): a doubled quote, and in ' and " strings a
    backslash before the quote or a second backslash, keep the string open; nothing is
    unescaped (MLflow's server compares the text between the quotes as it stands)."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and quote != "`" and i + 1 < len(text) and text[i + 1] in (quote, "\\"):
            i += 2
        elif ch == quote:
            if i + 1 < len(text) and text[i + 1] == quote:
                i += 2
            else:
                return text[start + 1:i], i + 1
        else:
            i += 1
    raise FilterError(f"unterminated {quote} quote", text, start)


def _tokens(text: str) -> list[_Token]:
    tokens, i, n = [], 0, len(text)
    while True:
        space = _SPACE.match(text, i)
        if space:
            i = space.end()
        if i >= n:
            tokens.append(_Token("end", None, n, "end of filter"))
            return tokens
        ch = text[i]
        if ch in "(),":
            kind = {"(": "lparen", ")": "rparen", ",": "comma"}[ch]
            tokens.append(_Token(kind, ch, i, ch))
            i += 1
            continue
        op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
        if op is not None:
            tokens.append(_Token("op", {"<>": "!=", "==": "="}.get(op, op), i, op))
            i += len(op)
            continue
        if ch == "`":
            value, end = _quoted(text, i)
            if end < n and text[end] == ".":  # `metric`.name: a back-ticked entity
                tokens.append(_key_token(text, i, value, end + 1))
                i = tokens[-1].position + len(tokens[-1].text)
                continue
        if ch in "'\"`":
            value, end = _quoted(text, i)
            tokens.append(_Token({"'": "string", '"': "string", "`": "backtick"}[ch], value, i, text[i:end]))
            i = end
            continue
        number = _NUMBER.match(text, i)
        if number:
            tokens.append(_Token("number", float(number.group()), i, number.group()))
            i = number.end()
            continue
        word = _WORD.match(text, i)
        if word:
            end = word.end()
            if end < n and text[end] == ".":
                tokens.append(_key_token(text, i, word.group(), end + 1))
                i = tokens[-1].position + len(tokens[-1].text)
            else:
                tokens.append(_Token("word", word.group().lower(), i, word.group()))
                i = end
            continue
        raise FilterError(f"unexpected character {ch!r}", text, i)


def _key_token(text: str, start: int, entity_text: str, key_start: int) -> _Token:
    entity = _ENTITIES.get(entity_text.lower())
    if entity is None:
        raise FilterError(f"unknown entity {entity_text!r}: expected metrics., params., tags., attributes. "
                          "or datasets.", text, start)
    if key_start < len(text) and text[key_start] in "`\"":
        key, end = _quoted(text, key_start)
    else:
        bare = _BARE_KEY.match(text, key_start)
        if bare is None:
            raise FilterError(f"expected a name after {entity_text}. (quote names with spaces: "
                              f"{entity_text}.`my name`)", text, key_start)
        key, end = bare.group(), bare.end()
    if not key:
        raise FilterError("empty name", text, key_start)
    if entity == ATTRIBUTES:
        key = _attribute(key, text, key_start)
    elif entity == DATASETS and key not in _DATASET_KEYS:
        raise FilterError(f"unknown dataset field {key!r}: expected one of {', '.join(_DATASET_KEYS)}",
                          text, key_start)
    return _Token("key", Key(entity, key, start), start, text[start:end])


def _attribute(name: str, text: str, position: int) -> str:
    """The canonical attribute for a name or alias (case-insensitive); FilterError if unknown."""
    known = _ATTRIBUTES.get(name.lower())
    if known is None:
        raise FilterError(f"unknown attribute {name!r}: expected one of {', '.join(sorted(_ATTRIBUTES))}",
                          text, position)
    return known[0]


def _as_attribute_key(token: _Token, text: str) -> _Token | None:
    """An entity-less name (``status``, ```Run name```) read as an attribute, as MLflow does."""
    if (token.kind == "word" and token.value not in _KEYWORDS) or token.kind == "backtick":
        name = token.value if token.kind == "backtick" else token.text
        return _Token("key", Key(ATTRIBUTES, _attribute(name, text, token.position), token.position),
                      token.position, token.text)
    return None


# --- parser ----------------------------------------------------------------------------------


_MAX_DEPTH = 64  # nested parentheses; deeper is surely not a person's filter


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        token = self.tokens[self.i]
        if token.kind != "end":
            self.i += 1
        return token

    def error(self, reason: str, token: _Token) -> FilterError:
        return FilterError(reason, self.text, token.position)

    def is_word(self, *words: str) -> bool:
        token = self.peek()
        return token.kind == "word" and token.value in words

    def parse(self) -> Node:
        node = self.or_expr()
        token = self.peek()
        if token.kind != "end":
            if token.kind == "rparen":
                raise self.error("unbalanced ')'", token)
            raise self.error(f"expected AND, OR or the end of the filter, found {_describe(token)}", token)
        return node

    def or_expr(self) -> Node:
        terms = [self.and_expr()]
        while self.is_word("or"):
            self.next()
            terms.append(self.and_expr())
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def and_expr(self) -> Node:
        terms = [self.term()]
        while self.is_word("and"):
            self.next()
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else And(tuple(terms))

    def term(self) -> Node:
        token = self.next()
        if token.kind == "lparen":
            if self.peek().kind == "rparen":
                raise self.error("empty parentheses", self.peek())
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                raise self.error(f"parentheses nested deeper than {_MAX_DEPTH}", token)
            node = self.or_expr()
            self.depth -= 1
            close = self.next()
            if close.kind != "rparen":
                raise self.error(f"expected ')' to close the '(' at position {token.position}, found {_describe(close)}", close)
            return node
        if token.kind == "key":
            return self.comparison(token)
        if token.kind == "end":
            raise self.error("unexpected end of filter: expected a comparison such as metrics.loss < 0.5", token)
        attribute = _as_attribute_key(token, self.text)
        if attribute is not None:
            return self.comparison(attribute)
        raise self.error(f"expected a comparison such as metrics.loss < 0.5, found {_describe(token)}", token)

    def comparison(self, key_token: _Token) -> Comparison:
        key: Key = key_token.value
        token = self.next()
        if token.kind == "op":
            op = token.value
            value_token = self.next()
            value = self.value(value_token)
        elif token.kind == "word" and token.value in ("like", "ilike", "in", "not", "is"):
            op, value_token, value = self.word_operator(token)
        else:
            raise self.error(f"expected a comparison operator (= != < <= > >= LIKE ILIKE IN IS) after {key_token.text}, "
                             f"found {_describe(token)}", token)
        return _checked(self, key, op, value, key_token, token, value_token)

    def word_operator(self, token: _Token):
        negate = ""
        if token.value == "is":
            nxt = self.next()
            if nxt.kind == "word" and nxt.value == "not":
                negate, nxt = "NOT ", self.next()
            if not (nxt.kind == "word" and nxt.value == "null"):
                raise self.error(f"expected NULL after IS, found {_describe(nxt)}", nxt)
            return f"IS {negate}NULL", nxt, None
        if token.value == "not":
            token = self.next()
            if not (token.kind == "word" and token.value in ("like", "ilike", "in")):
                raise self.error(f"expected LIKE, ILIKE or IN after NOT, found {_describe(token)}", token)
            negate = "NOT "
        if token.value == "in":
            open_ = self.next()
            if open_.kind != "lparen":
                raise self.error(f"expected '(' after IN, found {_describe(open_)}", open_)
            values, first = [], None
            while True:
                value_token = self.next()
                first = first or value_token
                values.append((self.value(value_token), value_token))
                sep = self.next()
                if sep.kind == "rparen":
                    break
                if sep.kind != "comma":
                    raise self.error(f"expected ',' or ')' in the IN list, found {_describe(sep)}", sep)
            kinds = {type(v) for v, _ in values}
            if len(kinds) > 1:
                odd = next(t for v, t in values if type(v) is not type(values[0][0]))
                raise self.error("an IN list mixes strings and numbers", odd)
            return f"{negate}IN", first, tuple(v for v, _ in values)
        value_token = self.next()
        value = self.value(value_token)
        if not isinstance(value, str):
            raise self.error(f"{token.value.upper()} needs a quoted string pattern, found {_describe(value_token)}", value_token)
        return f"{negate}{token.value.upper()}", value_token, value

    def value(self, token: _Token):
        if token.kind in ("string", "number"):
            return token.value
        if token.kind == "end":
            raise self.error("unexpected end of filter: expected a value", token)
        if token.kind == "backtick":
            raise self.error("back ticks quote names, not values: use 'single quotes'", token)
        if token.kind == "word" and token.value not in _KEYWORDS:
            raise self.error(f"expected a quoted string or a number, found {_describe(token)} "
                             f"(quote strings: '{token.text}')", token)
        raise self.error(f"expected a value (a quoted string or a number), found {_describe(token)}", token)


def _checked(parser: _Parser, key: Key, op: str, value, key_token: _Token, op_token: _Token, value_token: _Token) -> Comparison:
    """Type rules per entity, reported at the token that breaks them."""
    if op.startswith("IS") and key.entity != DATASETS:
        return Comparison(key, op, None, key_token.position)
    values = value if isinstance(value, tuple) else (value,)
    numeric = isinstance(values[0], float)
    kind = ("number" if key.entity == METRICS else _ATTRIBUTES[key.key][1] if key.entity == ATTRIBUTES
            else "string" if key.entity == DATASETS else "text")
    if key.entity == DATASETS and op.startswith("IS"):
        raise parser.error("datasets take =, !=, LIKE, ILIKE, IN and NOT IN", op_token)
    if kind in ("number", "time") and op in ("LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE"):
        raise parser.error(f"{op} compares strings; {key_token.text} is a {kind}", op_token)
    if kind == "number" and not numeric:
        raise parser.error(f"{key_token.text} is a number: compare it with a number, not a string", value_token)
    if kind == "string" and numeric:
        raise parser.error(f"{key_token.text} is a string: quote the value", value_token)
    if kind in ("string", "text") and not numeric and op not in _STRING_OPS:
        raise parser.error(f"{op} does not compare strings: use =, !=, LIKE, ILIKE or IN"
                           + (" (or a number to compare numerically)" if kind == "text" else ""), op_token)
    if kind == "time":
        converted = tuple(_epoch_ms(parser, v, value_token) for v in values)
        value = converted if isinstance(value, tuple) else converted[0]
    return Comparison(key, op, value, key_token.position)


def _epoch_ms(parser: _Parser, value, token: _Token) -> float:
    if isinstance(value, float):
        return value
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise parser.error(f"{value!r} is not a time: use milliseconds since the epoch or an ISO-8601 "
                           f"string such as '2025-01-31T12:00:00'", token) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp() * 1000.0


def parse_filter(text: str | None) -> Node | None:
    """The AST of a filter string, or None for an empty/blank filter. Raises FilterError."""
    if text is not None and not isinstance(text, str):
        raise TypeError("filter must be a string")
    if text is None or not text.strip():
        return None
    return _Parser(text).parse()


def parse_order_by(order_by: Iterable[str] | str | None) -> list[OrderKey]:
    """``["metrics.val_loss ASC", "attributes.start_time DESC"]`` -> OrderKeys. Each clause is
    a key with an optional ASC (default) or DESC. Raises FilterError pointing into the clause."""
    if order_by is None:
        return []
    if isinstance(order_by, str):
        order_by = [order_by]
    keys = []
    for clause in order_by:
        if not isinstance(clause, str):
            raise TypeError("order_by clauses must be strings")
        parser = _Parser(clause)
        token = parser.next()
        token = _as_attribute_key(token, clause) or token
        if token.kind != "key":
            raise parser.error(f"expected metrics.NAME, params.NAME, tags.NAME or attributes.NAME, found {_describe(token)}"
                               if token.kind != "end" else "empty order_by clause", token)
        ascending = True
        if parser.is_word("asc", "desc"):
            ascending = parser.next().value == "asc"
        rest = parser.peek()
        if rest.kind != "end":
            raise parser.error(f"expected ASC, DESC or the end of the clause, found {_describe(rest)}", rest)
        keys.append(OrderKey(token.value, ascending))
    return keys


def referenced_keys(node: Node | None, order: Iterable[OrderKey] = ()) -> dict[str, set[str]]:
    """{entity: {keys}} used by a filter and an order: what a query has to fetch."""
    found: dict[str, set[str]] = {METRICS: set(), PARAMS: set(), TAGS: set(), ATTRIBUTES: set(), DATASETS: set()}

    def visit(n) -> None:
        if isinstance(n, Comparison):
            found[n.key.entity].add(n.key.key)
        elif isinstance(n, (And, Or)):
            for t in n.terms:
                visit(t)

    visit(node)
    for o in order:
        found[o.key.entity].add(o.key.key)
    return found


# --- compiler --------------------------------------------------------------------------------


_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


@dataclass(frozen=True)
class Columns:
    """The SQL expressions a compiled filter reads: one Map(String, Float64) of last metric
    values, two Map(String, String) of params and tags, a column per attribute, and an
    Array(String) per dataset field (``name``, ``digest``, ``context``; one element per dataset
    of the run). They are written into the SQL verbatim, so they must be plain (optionally
    table-qualified) names. An attribute or dataset field without a column cannot be searched
    (FilterError)."""

    metrics: str = "metrics"
    params: str = "params"
    tags: str = "tags"
    attributes: Mapping[str, str] = field(default_factory=lambda: {
        "run_id": "run_id", "name": "name", "status": "status", "project": "project",
        "start_time": "start_time", "end_time": "end_time"})
    datasets: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (self.metrics, self.params, self.tags, *self.attributes.values(), *self.datasets.values()):
            if not _COLUMN.fullmatch(name):
                raise ValueError(f"column {name!r} is not a plain identifier")


class _Binder:
    """Numbered server-side parameters ``{f0:Type}``, continuing after those already in ``params``."""

    def __init__(self, params: dict, prefix: str) -> None:
        self.params = params
        self.prefix = prefix
        self.n = 0

    def __call__(self, value, type_: str) -> str:
        while f"{self.prefix}{self.n}" in self.params:
            self.n += 1
        name = f"{self.prefix}{self.n}"
        self.params[name] = value
        return f"{{{name}:{type_}}}"


def _sql(node: Node, columns: Columns, bind: _Binder, text: str) -> str:
    if isinstance(node, (And, Or)):
        joiner = " AND " if isinstance(node, And) else " OR "
        return "(" + joiner.join(_sql(t, columns, bind, text) for t in node.terms) + ")"
    _check_columns(node.key, columns, text, node.position)
    return _comparison_sql(node, columns, bind)


def _check_columns(key: Key, columns: Columns, text: str, position: int) -> None:
    if key.entity == ATTRIBUTES and key.key not in columns.attributes:
        raise FilterError(f"attribute {key.key!r} is not stored for these runs (searchable: "
                          f"{', '.join(sorted(columns.attributes))})", text, position)
    if key.entity == DATASETS and key.key not in columns.datasets:
        raise FilterError("datasets are not stored for these runs (runs logged through the MLflow API have them)",
                          text, position)


def _operator_sql(expr: str, op: str, value, type_: str, bind: _Binder) -> str:
    if op in ("IN", "NOT IN"):
        return f"{expr} {op} ({', '.join(bind(v, type_) for v in value)})"
    if op in ("LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE"):
        function = op.split()[-1].lower()
        return f"{'NOT ' if op.startswith('NOT') else ''}{function}({expr}, {bind(value, 'String')})"
    return f"{expr} {op} {bind(value, type_)}"


def _comparison_sql(c: Comparison, columns: Columns, bind: _Binder) -> str:
    entity, op, value = c.key.entity, c.op, c.value
    if entity == ATTRIBUTES:
        column = columns.attributes[c.key.key]
        kind = _ATTRIBUTES[c.key.key][1]
        if op in ("IS NULL", "IS NOT NULL"):
            return f"({column} {op})" if kind == "time" else f"({'' if op == 'IS NULL' else 'NOT '}empty({column}))"
        if kind == "time":
            return f"({_operator_sql(f'toUnixTimestamp64Milli({column})', op, value, 'Float64', bind)})"
        return f"({_operator_sql(column, op, value, 'String', bind)})"
    if entity == DATASETS:
        return f"(arrayExists(x -> {_operator_sql('x', op, value, 'String', bind)}, {columns.datasets[c.key.key]}))"
    column = {METRICS: columns.metrics, PARAMS: columns.params, TAGS: columns.tags}[entity]
    key = bind(c.key.key, "String")
    present = f"mapContains({column}, {key})"
    if op == "IS NULL":
        return f"(NOT {present})"
    if op == "IS NOT NULL":
        return f"({present})"
    element = f"{column}[{key}]"
    numeric = isinstance(value, float) or (isinstance(value, tuple) and isinstance(value[0], float))
    if entity != METRICS and numeric:
        element = f"toFloat64OrNull({element})"
    return f"({present} AND {_operator_sql(element, op, value, 'Float64' if numeric else 'String', bind)})"


def compile_filter(filter_: str | Node | None, columns: Columns | None = None, params: dict | None = None,
                   prefix: str = "f") -> tuple[str, dict]:
    """A filter string (or parsed AST) -> (WHERE fragment, parameters).

    The fragment reads the columns named in ``columns`` and binds every value and key as a
    numbered parameter (``{f0:String}``, ``{f1:Float64}``, ...), appended to ``params`` when
    given (numbers continue after names already used). An empty filter compiles to ``1``.
    Raises FilterError for a malformed filter.
    """
    node = parse_filter(filter_) if isinstance(filter_, (str, type(None))) else filter_
    params = {} if params is None else params
    if node is None:
        return "1", params
    text = filter_ if isinstance(filter_, str) else ""
    return _sql(node, columns or Columns(), _Binder(params, prefix), text), params


def compile_order_by(order_by: Iterable[str] | Iterable[OrderKey] | str | None, columns: Columns | None = None,
                     params: dict | None = None, prefix: str = "o") -> tuple[list[str], dict]:
    """order_by clauses -> (list of ORDER BY terms, parameters). Runs that lack the metric,
    param or tag sort last in either direction (as in MLflow)."""
    columns = columns or Columns()
    params = {} if params is None else params
    bind = _Binder(params, prefix)
    items = list(order_by) if order_by is not None and not isinstance(order_by, str) else order_by
    keys = items if items and all(isinstance(k, OrderKey) for k in items) else parse_order_by(items)
    terms = []
    for o in keys:
        direction = "ASC" if o.ascending else "DESC"
        if o.key.entity == DATASETS:
            raise FilterError("runs cannot be ordered by datasets", str(o.key), 0)
        _check_columns(o.key, columns, str(o.key), 0)
        if o.key.entity == ATTRIBUTES:
            terms.append(f"{columns.attributes[o.key.key]} {direction} NULLS LAST")
            continue
        column = {METRICS: columns.metrics, PARAMS: columns.params, TAGS: columns.tags}[o.key.entity]
        key = bind(o.key.key, "String")
        null = "CAST(NULL, 'Nullable(Float64)')" if o.key.entity == METRICS else "NULL"
        # NaN metrics sort with the missing ones, after every number.
        value = f"if(mapContains({column}, {key}) AND NOT isNaN({column}[{key}]), {column}[{key}], {null})" \
            if o.key.entity == METRICS else f"if(mapContains({column}, {key}), {column}[{key}], {null})"
        terms.append(f"{value} {direction} NULLS LAST")
    return terms, params
