"""The app's rules for text that ends up in mail headers: addresses, domains, and what counts as a control
character. One definition each, used by settings, the mail model, routing and templates alike."""

from __future__ import annotations

import re

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
