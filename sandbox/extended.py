"""Exchange's extended property ids (`singleValueExtendedProperties`) and how they compare."""

from __future__ import annotations

import re

_PROPERTY_ID = re.compile(
    r"^(?P<type>\w+)\s+(?:(?P<guid>\{[0-9A-Fa-f-]{36}\})\s+(?:(?P<name_kw>Name)\s+(?P<name>\S.*)|(?P<id_kw>Id)\s+"
    r"(?P<id>0x[0-9A-Fa-f]+))|(?P<tag>0x[0-9A-Fa-f]+))$",
    re.IGNORECASE,
)


def extended_property_key(property_id: str) -> str:
    """The form two extended property ids are compared in: type, GUID and `Id` tags ignore case, a `Name` does
    not (Exchange's rule). ValueError for an id that is none of Exchange's three forms."""
    match = _PROPERTY_ID.match(property_id.strip())
    if match is None:
        raise ValueError(property_id)
    kind = match["type"].lower()
    if match["tag"]:
        return f"{kind} {match['tag'].lower()}"
    if match["name_kw"]:
        return f"{kind} {match['guid'].lower()} name {match['name']}"
    return f"{kind} {match['guid'].lower()} id {match['id'].lower()}"
