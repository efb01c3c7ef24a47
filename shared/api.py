"""The HTTP API as plain async handlers: `ApiRequest` in, `ApiAnswer` out, errors turned into answers here.

The intake path (`post_mail` up to the enqueue) imports nothing of msgraph or azure-identity, so a webhook
is acknowledged fast and a cold start stays short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .errors import (
    AppError,
    Detail,
    conflict,
    invalid_request,
    not_found,
    payload_too_large,
    unavailable,
    unsupported_media_type,
)
from .mail import ID_PATTERN, check_mail, parse_mail, payload_hash
from .store import MailStatus, StatusChanged, Store

log = logging.getLogger("notifier.api")

MAX_REQUEST_BYTES = 5 * 1024 * 1024  # 3 MB of attachments is 4 MB of base64, plus the body


@dataclass
class ApiRequest:
    method: str
    url: str
    headers: Mapping[str, str]  # lower-case names
    params: Mapping[str, str] = field(default_factory=dict)
    route: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class ApiAnswer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[ApiRequest], Awaitable[ApiAnswer]]


async def answer(handler: Handler, request: ApiRequest) -> ApiAnswer:
    """Run a handler; AppErrors become their answers, anything else a 500 without internals."""
    try:
        return await handler(request)
    except AppError as error:
        return ApiAnswer(error.status, error.body())
    except Exception:
        incident = uuid.uuid4().hex
        log.exception("unhandled error in %s %s (incident %s)", request.method, request.url, incident)
        return ApiAnswer(
            500,
            {
                "error": {
                    "code": "internal_error",
                    "details": [],
                    "message": f"The request failed unexpectedly (incident {incident}).",
                }
            },
        )


def json_body(request: ApiRequest, limit: int = MAX_REQUEST_BYTES) -> Any:
    """The request's JSON body, after the media type and size checks."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise unsupported_media_type(f"Send the body as application/json, not {media_type or 'no media type'}.")
    if len(request.body) > limit:
        raise payload_too_large(f"The body has {len(request.body)} bytes; at most {limit} are accepted.")
    try:
        return json.loads(request.body)
    except (ValueError, RecursionError) as error:
        raise AppError(
            400, "invalid_json", f"The body is not valid JSON: {error}"[:300], [Detail("body", "not valid JSON")]
        ) from None


async def post_mail(request: ApiRequest, settings: Settings, store: Store) -> ApiAnswer:
    """Validate, record status `queued`, enqueue on `mail-outbox`; idempotent by `id`/`Idempotency-Key`."""
    mail = check_mail(parse_mail(json_body(request)), settings)
    key = request.headers.get("idempotency-key")
    if key is not None and not ID_PATTERN.match(key):
        raise invalid_request(
            "The Idempotency-Key header is not a valid id.",
            [Detail("Idempotency-Key", "1-64 letters, digits or . _ : -")],
        )
    if key is not None and mail.id is not None and key != mail.id:
        raise invalid_request(
            "The body's id and the Idempotency-Key header differ.",
            [Detail("id", "differs from the Idempotency-Key header")],
        )
    mail_id = mail.id or key or uuid.uuid4().hex
    payload = mail.model_copy(update={"id": mail_id}).dump()
    fingerprint = payload_hash(payload)
    accepted = ApiAnswer(202, {"id": mail_id, "status": "queued"}, {"Location": f"/api/mail/{mail_id}"})

    status = await store.create_status(
        MailStatus(
            id=mail_id,
            status="queued",
            payload_hash=fingerprint,
            sender=mail.sender or "",
            recipient_count=len(mail.recipients()),
        )
    )
    if status is None:
        existing = await store.get_status(mail_id)
        if existing is None:
            raise unavailable("The mail's status changed while it was read; try again.")
        if existing.payload_hash != fingerprint:
            raise conflict(f"The id {mail_id!r} was already used for a different mail.")
        if not existing.enqueued:  # the first request died between its status row and its enqueue
            await _enqueue(store, existing, payload)
        accepted.headers["Idempotent-Replay"] = "true"
        return accepted
    await _enqueue(store, status, payload)
    return accepted


async def _enqueue(store: Store, status: MailStatus, payload: dict[str, Any]) -> None:
    try:
        await store.enqueue_mail(status.id, payload)
    except Exception:
        log.exception("enqueue of mail %s failed", status.id)
        if not status.enqueued:
            await store.delete_status(status.id)
        raise unavailable("The mail could not be queued; nothing was accepted. Try again.") from None
    status.enqueued = True
    # StatusChanged: the sender got to it first; it is enqueued, and the sender's row is the newer one
    with contextlib.suppress(StatusChanged):
        await store.save_status(status)


async def get_mail(request: ApiRequest, store: Store) -> ApiAnswer:
    mail_id = request.route.get("id", "")
    if not ID_PATTERN.match(mail_id):
        raise invalid_request("That is not a valid mail id.", [Detail("id", "1-64 letters, digits or . _ : -")])
    status = await store.get_status(mail_id)
    if status is None:
        raise not_found(f"No mail with id {mail_id!r}.")
    return ApiAnswer(200, status.answer())


async def health(settings: Settings | Exception, checks: dict[str, Callable[[], Awaitable[Any]]]) -> ApiAnswer:
    """Each check with its time and outcome; 503 when any fails. Answers carry no secrets."""
    results: dict[str, Any] = {}
    if isinstance(settings, Exception):
        results["config"] = {"ok": False, "error": str(settings)}
    else:
        results["config"] = {"ok": True, "mode": settings.graph_auth_mode}
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            await asyncio.wait_for(check(), timeout=10)
            results[name] = {"ok": True}
        except Exception as error:
            results[name] = {"ok": False, "error": type(error).__name__ + _safe_reason(error)}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    healthy = all(result["ok"] for result in results.values())
    return ApiAnswer(200 if healthy else 503, {"status": "ok" if healthy else "degraded", "checks": results})


def _safe_reason(error: Exception) -> str:
    """A short reason that cannot carry a secret: our own CredentialError text, or an HTTP status."""
    from_module = type(error).__module__
    if from_module.startswith("shared."):
        return f": {error}"[:200]
    status = getattr(error, "status_code", None) or getattr(error, "status", None)
    return f" (HTTP {status})" if status else ""
