"""Errors with a code and a message fit for an API answer, raised where the problem is found.

`shared.api` turns them into HTTP answers in one place; the queue path records them in the mail's status.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Detail:
    """One problem with one field of a request: `{"field": "to[0]", "message": "not an email address"}`."""

    field: str
    message: str


@dataclass
class AppError(Exception):
    status: int
    code: str
    message: str
    details: list[Detail] = field(default_factory=list)

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


def invalid_request(message: str, details: list[Detail] | None = None) -> AppError:
    return AppError(400, "invalid_request", message, details or [])


def payload_too_large(message: str) -> AppError:
    return AppError(413, "payload_too_large", message)


def unsupported_media_type(message: str) -> AppError:
    return AppError(415, "unsupported_media_type", message)


def unauthorized(message: str) -> AppError:
    return AppError(401, "unauthorized", message)


def not_found(message: str) -> AppError:
    return AppError(404, "not_found", message)


def conflict(message: str) -> AppError:
    return AppError(409, "conflict", message)


def unavailable(message: str) -> AppError:
    return AppError(503, "service_unavailable", message)


class InvalidMessage(Exception):
    """A queue message that can never be processed (not JSON, a bad id, a claim check naming no blob): it goes
    to the poison queue at once, with this reason recorded."""


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
