"""Errors as types, raised where the problem is found: what went wrong is the type, the code and message are
fit for the caller. `shared.api` turns them into HTTP answers in one table; the queue adapters poison
`InvalidMessage`s; Graph's own failures are `GraphError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Detail:
    """One problem with one field of a request: `{"field": "to[0]", "message": "not an email address"}`."""

    field: str
    message: str


class AppError(Exception):
    """An error whose code and message are fit to show the caller (no secret, no internals), with the field
    of each problem. It names no HTTP status: `shared.api` maps error types to statuses in one table, and the
    queue adapters turn `InvalidMessage` into a poisoned message."""

    code = "error"

    def __init__(self, message: str, details: Sequence[Detail] = (), *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "details": [{"field": d.field, "message": d.message} for d in self.details],
            }
        }


class InvalidRequest(AppError):
    """The request (or a mail, wherever it came from) breaks a rule; `details` name the fields."""

    code = "invalid_request"


class InvalidJson(InvalidRequest):
    code = "invalid_json"


class PayloadTooLarge(AppError):
    code = "payload_too_large"


class UnsupportedMediaType(AppError):
    code = "unsupported_media_type"


class Unauthorized(AppError):
    """The caller's credentials (a source's bearer token or signature) are missing or wrong."""

    code = "unauthorized"


class Forbidden(AppError):
    """The caller may not do this at all, whatever it presents."""

    code = "forbidden"


class NotFound(AppError):
    code = "not_found"


class MethodNotAllowed(AppError):
    code = "method_not_allowed"


class Conflict(AppError):
    """The request collides with what exists (an id used for another mail)."""

    code = "conflict"


class Unavailable(AppError):
    """Something the app depends on cannot be reached now; the caller may try again."""

    code = "service_unavailable"


class NotConfigured(Unavailable):
    """The app's settings or routing file are missing or invalid: it answers nothing but its health until they
    are fixed. The message names nothing internal (the keyed health details and the log name the setting)."""

    code = "not_configured"


class UpstreamRefused(AppError):
    """A service the app calls (Graph) refused the operation; the code is that service's."""


class AttachmentChanged(AppError):
    """An attachment's blob is not what the app accepted: its size or SHA-256 differs, or it is gone. The mail
    fails rather than send content nobody checked."""

    code = "attachment_changed"


class InvalidMessage(AppError):
    """A queue message that can never be processed (not JSON, a bad id, a claim check naming no blob): it goes
    to the poison queue at once, with this reason recorded."""

    code = "invalid_message"


@dataclass
class GraphError(Exception):
    """A failed Graph call: Graph's status and code, and Retry-After when Graph gave one."""

    status: int
    code: str
    message: str
    retry_after: float | None = None

    @property
    def transient(self) -> bool:
        """Worth retrying later: throttling, service trouble, or no answer at all (status 0)."""
        return self.status in (0, 408, 429) or self.status >= 500

    def __str__(self) -> str:
        return f"Graph {self.status} {self.code}: {self.message}"
