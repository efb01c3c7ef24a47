"""OData query options for the sandbox's Graph collections: `$filter` to SQL, `$orderby`, `$select`.

The grammar is the part of OData that Graph's Outlook endpoints accept: comparisons (eq ne gt ge lt le),
`and`/`or`/`not`, parentheses, `contains`/`startswith`, and lambdas over `categories`. Every value is a bound
parameter, never pasted into SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .extended import extended_property_key


class ODataError(ValueError):
    """A query option Graph would answer with 400; `code` is Graph's error code."""

    def __init__(self, message: str, code: str = "BadRequest") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Column:
    """A filterable/sortable property: its SQL column and the kind of literal it compares with."""

    sql: str
    kind: str  # "bool", "str", "datetime", "number", "collection" (of strings), "properties" (extended)


@dataclass
class SqlFilter:
    where: str
    params: list[Any] = field(default_factory=list)
    properties: list[str] = field(default_factory=list)  # in order of appearance, for InefficientFilter


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<datetime>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z_][A-Za-z0-9_]*)*)
      | (?P<punct>[(),:])
    )""",
    re.VERBOSE,
)
MAX_DEPTH = 32  # nesting of parentheses and `not`; deeper clauses are refused, not recursed into
MAX_CLAUSE = 8192
_COMPARISONS = {"eq": "=", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ODataError(f"Invalid filter clause: syntax error at position {position}.")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def format_datetime(value: datetime) -> str:
    """Graph's wire format for dates: UTC, seconds, `Z`."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_datetime(text: str) -> str:
    """Normalise an ISO 8601 date or date-time to Graph's wire format; ValueError when it is none."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return format_datetime(value)


class _Parser:
    def __init__(self, text: str, columns: dict[str, Column]) -> None:
        self.tokens = _tokenize(text)
        self.position = 0
        self.columns = columns
        self.params: list[Any] = []
        self.properties: list[str] = []
        self.lambda_variable: str | None = None
        self.lambda_kind = ""
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1].lower() != value):
            found = token[1] if token else "end of clause"
            raise ODataError(f"Invalid filter clause: expected {value or 'a term'}, found '{found}'.")
        self.position += 1
        return token

    def parse(self) -> str:
        sql = self.expression()
        if self.peek() is not None:
            raise ODataError(f"Invalid filter clause: unexpected '{self.peek()[1]}'.")  # type: ignore[index]
        return sql

    def expression(self) -> str:
        parts = [self.conjunction()]
        while self._next_is_word("or"):
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def conjunction(self) -> str:
        parts = [self.negation()]
        while self._next_is_word("and"):
            self.take()
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def negation(self) -> str:
        if self._next_is_word("not"):
            self.take()
            with self._nested():
                return f"NOT ({self.negation()})"
        return self.primary()

    @contextmanager
    def _nested(self) -> Iterator[None]:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ODataError(f"Invalid filter clause: nested deeper than {MAX_DEPTH} levels.")
        try:
            yield
        finally:
            self.depth -= 1

    def primary(self) -> str:
        token = self.peek()
        if token is None:
            raise ODataError("Invalid filter clause: the clause ends too early.")
        if token == ("punct", "("):
            self.take()
            with self._nested():
                inner = self.expression()
            self.take(")")
            return inner
        if token[0] != "name":
            raise ODataError(f"Invalid filter clause: unexpected '{token[1]}'.")
        name = token[1]
        if name.lower() in {"contains", "startswith", "endswith"}:
            return self.function()
        if name.lower().endswith("/any") or name.lower().endswith("/all"):
            return self.lambda_()
        return self.comparison()

    def function(self) -> str:
        function = self.take()[1].lower()
        self.take("(")
        column = self.column(self.take()[1])
        self.take(",")
        value = self.literal(Column(column.sql, "str"))
        self.take(")")
        escaped = str(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = {"contains": f"%{escaped}%", "startswith": f"{escaped}%", "endswith": f"%{escaped}"}
        self.params.append(pattern[function])
        return f"{column.sql} LIKE ? ESCAPE '\\'"

    def lambda_(self) -> str:
        path = self.take()[1]
        collection, operator = path.rsplit("/", 1)
        column = self.column(collection)
        if column.kind not in {"collection", "properties"}:
            raise ODataError(f"Invalid filter clause: '{collection}' is not a collection.")
        self.take("(")
        variable = self.take()[1]
        self.take(":")
        self.lambda_variable, self.lambda_kind = variable, column.kind
        body = self.expression()
        self.lambda_variable = None
        self.take(")")
        if operator.lower() == "any":
            return f"EXISTS (SELECT 1 FROM json_each({column.sql}) WHERE {body})"
        return f"NOT EXISTS (SELECT 1 FROM json_each({column.sql}) WHERE NOT ({body}))"

    def comparison(self) -> str:
        name = self.take()[1]
        if self.lambda_variable is not None and self.lambda_kind == "properties":
            column = self._property_member(name)
        elif self.lambda_variable is not None and name == self.lambda_variable:
            column = Column("value", "str")
        else:
            column = self.column(name)
            if column.kind == "collection":
                raise ODataError(f"Invalid filter clause: use {name}/any(...) to filter on a collection.")
        operator = self.take()[1].lower()
        if operator not in _COMPARISONS:
            raise ODataError(f"Invalid filter clause: unknown operator '{operator}'.")
        value = self.literal(column)
        if column.kind == "propertyid":
            try:
                value = extended_property_key(str(value))
            except ValueError:
                raise ODataError(f"Invalid filter clause: '{value}' is not an extended property id.") from None
        if value is None:
            return f"{column.sql} IS {'NOT ' if operator == 'ne' else ''}NULL"
        self.params.append(value)
        collate = " COLLATE NOCASE" if column.kind == "str" else ""
        return f"{column.sql}{collate} {_COMPARISONS[operator]} ?"

    def _property_member(self, name: str) -> Column:
        """`ep/id` or `ep/value` inside `singleValueExtendedProperties/Any(ep: ...)`: an id in the form Exchange
        compares it in, a value without regard to case (as Graph documents for filters on a value)."""
        variable, _, member = name.partition("/")
        if variable != self.lambda_variable or member.lower() not in {"id", "value"}:
            raise ODataError(f"Invalid filter clause: '{name}' is not {self.lambda_variable}/id or /value.")
        if member.lower() == "id":
            return Column("json_extract(value, '$.id')", "propertyid")
        return Column("json_extract(value, '$.value')", "str")

    def column(self, name: str) -> Column:
        column = self.columns.get(name.lower())
        if column is None:
            raise ODataError(f"Could not find a property named '{name}' on type 'microsoft.graph.message'.")
        self.properties.append(name.lower())
        return column

    def literal(self, column: Column) -> Any:
        kind, text = self.take()
        if kind == "name" and text.lower() in {"true", "false"}:
            if column.kind != "bool":
                raise ODataError(f"Invalid filter clause: {text} cannot be compared with a {column.kind}.")
            return 1 if text.lower() == "true" else 0
        if kind == "name" and text.lower() == "null":
            return None
        if kind == "string":
            value = text[1:-1].replace("''", "'")
            if column.kind == "datetime":
                return self._datetime(value)
            if column.kind == "bool":
                raise ODataError(f"Invalid filter clause: '{value}' is not a boolean.")
            return value
        if kind == "datetime" and column.kind == "datetime":
            return self._datetime(text)
        if kind == "number" and column.kind == "number":
            return float(text)
        raise ODataError(f"Invalid filter clause: '{text}' is not a valid {column.kind} literal.")

    @staticmethod
    def _datetime(text: str) -> str:
        try:
            return parse_datetime(text)
        except ValueError:
            raise ODataError(f"Invalid filter clause: '{text}' is not a valid date-time.") from None

    def _next_is_word(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token[0] == "name" and token[1].lower() == word


def compile_filter(text: str, columns: dict[str, Column]) -> SqlFilter:
    """Translate a `$filter` clause into a SQL condition with bound parameters."""
    if not text.strip():
        raise ODataError("Invalid filter clause: the clause is empty.")
    if len(text) > MAX_CLAUSE:
        raise ODataError(f"Invalid filter clause: longer than {MAX_CLAUSE} characters.")
    parser = _Parser(text, columns)
    where = parser.parse()
    return SqlFilter(where, parser.params, parser.properties)


def compile_orderby(text: str, columns: dict[str, Column]) -> tuple[list[str], list[str]]:
    """Translate `$orderby` into SQL terms; also returns the property names in order."""
    terms: list[str] = []
    names: list[str] = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1].lower() not in {"asc", "desc"}):
            raise ODataError(f"Invalid $orderby clause: '{part.strip()}'.")
        column = columns.get(words[0].lower())
        if column is None or column.kind == "collection":
            raise ODataError(f"Could not find a sortable property named '{words[0]}'.")
        direction = "DESC" if len(words) == 2 and words[1].lower() == "desc" else "ASC"
        terms.append(f"{column.sql} {direction}")
        names.append(words[0].lower())
    return terms, names


def check_efficient(order_names: list[str], filter_properties: list[str]) -> None:
    """Outlook's rule: sorted properties must lead the filter, in the same order."""
    if order_names and filter_properties and filter_properties[: len(order_names)] != order_names:
        raise ODataError("The restriction or sort order is too complex for this operation.", code="InefficientFilter")


def parse_select(text: str, known: set[str]) -> list[str]:
    """Validate `$select`: property names Graph knows for the type."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ODataError("Invalid $select clause: no property named.")
    lowered = {name.lower(): name for name in known}
    selected = []
    for name in names:
        if name.lower() not in lowered:
            raise ODataError(f"Could not find a property named '{name}' on type 'microsoft.graph.message'.")
        selected.append(lowered[name.lower()])
    return selected


def parse_int(text: str, option: str, low: int, high: int) -> int:
    """An integer query option within Graph's bounds."""
    try:
        value = int(text)
    except ValueError:
        raise ODataError(f"Invalid value '{text}' for {option}.") from None
    if not low <= value <= high:
        raise ODataError(f"The value of {option} must be between {low} and {high}.")
    return value
