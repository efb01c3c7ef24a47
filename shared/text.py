"""The app's rules for text that ends up in mail headers: addresses, domains, and what counts as a control
character. One definition each, used by settings, the mail model, routing and templates alike."""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import Detail, InvalidJson, InvalidMessage

# Patterns end in \Z, not $: `$` also matches before a trailing newline, which would let "a@b.test\n" through.
ADDRESS = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+\Z"
)
DOMAIN = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)+\Z"
)
# C0 controls (CR and LF among them), DEL, the C1 controls (U+0085 NEL among them) and Unicode's own line and
# paragraph separators: anything a mail client or a header parser may take for a line break.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CONTROL_RUN = re.compile(CONTROL.pattern + "+")

MAX_JSON_DEPTH = 64  # no mail or alert payload nests deeper; Python's parser would recurse into a RecursionError


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # unrolled, so a 4 MB string is one fast match
_BRACKETS = re.compile(r"[\[\]{}]")


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text nests arrays and objects deeper than `limit` (checked before parsing, so a hostile
    `[[[[...` is refused without ever raising RecursionError)."""
    depth = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > limit:
            return True
    return False


def queue_json(text: str, what: str) -> dict[str, Any]:
    """A queue message's JSON object; InvalidMessage (poisoned at once) when it is not one."""
    if json_too_deep(text):
        raise InvalidMessage(f"not {what}: JSON nested too deep")
    try:
        value = json.loads(text)
    except ValueError as error:
        raise InvalidMessage(f"not {what}: {error}"[:300]) from None
    if not isinstance(value, dict):
        raise InvalidMessage(f"not {what}: not a JSON object")
    return value


def request_json(body: bytes, field: str = "body") -> Any:
    """A request's JSON (the body, or a form's part named `field`); InvalidJson (400) naming the field when it is
    not JSON or nests too deep."""
    if json_too_deep(body.decode("utf-8", "replace")):
        raise InvalidJson(
            f"The {field}'s JSON nests deeper than {MAX_JSON_DEPTH} levels.", [Detail(field, "nested too deep")]
        )
    try:
        return json.loads(body)
    except ValueError as error:
        message = f"The {field} is not valid JSON: {error}"[:300]
        raise InvalidJson(message, [Detail(field, "not valid JSON")]) from None
