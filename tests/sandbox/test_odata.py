"""The OData query-option compiler on its own: SQL shape, bound values, Outlook's rules."""

from __future__ import annotations

import pytest

from sandbox.graph import MESSAGE_COLUMNS
from sandbox.odata import ODataError, check_efficient, compile_filter, compile_orderby, parse_datetime


def test_comparisons_become_bound_parameters() -> None:
    compiled = compile_filter("isRead eq false and subject eq 'x'' OR 1=1'", MESSAGE_COLUMNS)
    assert compiled.where == "(is_read = ? AND subject COLLATE NOCASE = ?)"
    assert compiled.params == [0, "x' OR 1=1"]
    assert compiled.properties == ["isread", "subject"]


def test_lambdas_not_or_and_functions() -> None:
    compiled = compile_filter(
        "not categories/any(c:c eq 'Digested') or (startswith(subject, '50%_off') and hasAttachments eq true)",
        MESSAGE_COLUMNS,
    )
    assert "NOT (EXISTS (SELECT 1 FROM json_each(categories) WHERE value COLLATE NOCASE = ?))" in compiled.where
    assert compiled.params == ["Digested", "50\\%\\_off%", 1]


def test_datetimes_are_normalised_to_graphs_wire_format() -> None:
    compiled = compile_filter("receivedDateTime ge 2026-11-20T09:30:00+01:00", MESSAGE_COLUMNS)
    assert compiled.params == ["2026-11-20T08:30:00Z"]
    assert parse_datetime("2026-11-20") == "2026-11-20T00:00:00Z"


def test_inefficient_filter_rule() -> None:
    check_efficient(["receiveddatetime"], ["receiveddatetime", "isread"])
    check_efficient([], ["isread"])
    with pytest.raises(ODataError) as raised:
        check_efficient(["receiveddatetime"], ["isread", "receiveddatetime"])
    assert raised.value.code == "InefficientFilter"


def test_orderby_terms() -> None:
    assert compile_orderby("receivedDateTime desc, subject", MESSAGE_COLUMNS) == (
        ["received DESC", "subject ASC"],
        ["receiveddatetime", "subject"],
    )


@pytest.mark.parametrize(
    "clause",
    [
        "",
        "isRead",
        "isRead eq",
        "isRead eq true and",
        "isRead eq true)",
        "nosuch eq 1",
        "isRead gt",
        "categories/any(c:c eq 'x'",
        "subject eq 5",
        "contains(subject)",
        "isRead eq true;",
    ],
)
def test_malformed_filters_raise(clause: str) -> None:
    with pytest.raises(ODataError):
        compile_filter(clause, MESSAGE_COLUMNS)


def test_nesting_is_capped_instead_of_recursing_without_end() -> None:
    compile_filter("(" * 10 + "isRead eq true" + ")" * 10, MESSAGE_COLUMNS)
    with pytest.raises(ODataError, match="nested deeper"):
        compile_filter("(" * 40 + "isRead eq true" + ")" * 40, MESSAGE_COLUMNS)
    with pytest.raises(ODataError, match="nested deeper"):
        compile_filter("not " * 40 + "isRead eq true", MESSAGE_COLUMNS)
