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
