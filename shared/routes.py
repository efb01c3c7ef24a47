"""The app's entry points as constants: HTTP routes, queue and container names, and timer schedules.

`function_app.py` binds its triggers to these and `shared.openapi` describes the same routes, so the
published contract and the bindings cannot drift apart. Plain values only: no Azure Functions types here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ROUTE_PREFIX = "api"  # host.json's extensions.http.routePrefix (the Functions default)

MAIL_OUTBOX = "mail-outbox"
ALERTS_INBOX = "alerts-inbox"
ALERTS_FLUSH = "alerts-flush"
# the blob container attachments are handed over in: multipart file parts land there, and queue producers upload
# their own and reference them from a `mail-outbox` message as `mail-attachments/<name>`
MAIL_ATTACHMENTS = "mail-attachments"

# The one digest timer: every minute (UTC, NCRONTAB) it asks each digest's schedule what is due
# (`shared.digests.scheduled`); ALERT_DIGEST_SCHEDULE and MAILBOX_DIGEST_SCHEDULE are schedules it evaluates.
DIGEST_TICK = "0 * * * * *"
BOUNCE_CHECK_SCHEDULE = "0 */5 * * * *"  # every 5 minutes (UTC): the sending mailboxes' NDRs

_OPTIONAL_LAST_SEGMENT = re.compile(r"/\{(\w+)\?\}$")


@dataclass(frozen=True)
class Route:
    """One HTTP-triggered function: its name in `function_app.py`, route template, methods and auth level."""

    function: str
    template: str  # a Functions route template, relative to ROUTE_PREFIX: `mail/{id}`, `alerts/{source?}`
    methods: tuple[str, ...]
    auth_level: Literal["function", "anonymous"] = "function"

    def matches(self, path: str) -> bool:
        """Whether a request path (relative to ROUTE_PREFIX, no leading slash) is this template's."""
        pattern = ""
        for segment in self.template.split("/"):
            if segment.endswith("?}"):
                pattern += "(?:/[^/]+)?"
            elif segment.startswith("{"):
                pattern += "/[^/]+"
            else:
                pattern += "/" + re.escape(segment)
        return re.fullmatch(pattern, "/" + path.strip("/")) is not None

    def openapi_paths(self) -> list[str]:
        """The OpenAPI paths this template serves: an optional last segment makes two (`/a` and `/a/{x}`)."""
        optional = _OPTIONAL_LAST_SEGMENT.search(self.template)
        if optional is None:
            return ["/" + self.template]
        return ["/" + self.template[: optional.start()], "/" + self.template.replace("?}", "}")]


POST_MAIL = Route("post_mail", "mail", ("POST",))
GET_MAIL = Route("get_mail", "mail/{id}", ("GET",))
POST_ALERTS = Route("post_alerts", "alerts/{source?}", ("POST",))
RUN_DIGEST = Route("run_digest", "digests/{name}/run", ("POST",))
RUN_ALERT_DIGEST = Route("run_alert_digest", "alert-digests/{receiver}/run", ("POST",))
HEALTH = Route("health", "health", ("GET",), "anonymous")
HEALTH_DETAILS = Route("health_details", "health/details", ("GET",))
OPENAPI = Route("openapi", "openapi.json", ("GET",), "anonymous")

ROUTES = (POST_MAIL, GET_MAIL, POST_ALERTS, RUN_DIGEST, RUN_ALERT_DIGEST, HEALTH, HEALTH_DETAILS, OPENAPI)

# Any other path or method: the app answers it (404, or 405 with Allow) in the API's error shape, on Azure's
# host as on the devhost, instead of an empty body. Routes with literal segments win over this catch-all.
FALLBACK = Route("no_such_route", "{*path}", ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"), "anonymous")
