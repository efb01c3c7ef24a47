"""The HTTP API as plain async handlers: `ApiRequest` in, `ApiAnswer` out, errors turned into answers here.

The intake path (`post_mail` up to the enqueue) imports nothing of msgraph or azure-identity, so a webhook
is acknowledged fast and a cold start stays short.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .alerts.auth import SecretSource, admit_source
from .alerts.dispatch import ingest, preview, receipts
from .alerts.grouping import group_alerts
from .alerts.intake import SOURCES, parse_alerts
from .alerts.routing import NotifyConfig
from .config import Settings
from .digests.mailbox import run_mailbox_digest
from .errors import AppError, Detail, invalid_request, not_found, payload_too_large, unsupported_media_type
from .mail import ID_PATTERN, check_mail, parse_mail
from .outbox import submit_mail
from .store import Store

if TYPE_CHECKING:
    from .graph import GraphClient

log = logging.getLogger("notifier.api")

MAX_REQUEST_BYTES = 5 * 1024 * 1024  # 3 MB of attachments is 4 MB of base64, plus the body
MAX_ALERT_REQUEST_BYTES = 4 * 1024 * 1024  # 10,000 alerts of a few hundred bytes; more is a misuse


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
    replay = await submit_mail(store, mail.model_copy(update={"id": mail_id}))
    accepted = ApiAnswer(202, {"id": mail_id, "status": "queued"}, {"Location": f"/api/mail/{mail_id}"})
    if replay:
        accepted.headers["Idempotent-Replay"] = "true"
    return accepted


async def post_alerts(
    request: ApiRequest,
    settings: Settings,
    config: NotifyConfig,
    store: Store,
    secrets: Callable[[], SecretSource],
) -> ApiAnswer:
    """Authenticate, parse and route a source's alerts; record them in their groups (202), or with
    `?dryRun=true` answer the mails their groups would get now, storing nothing (200)."""
    source = request.route.get("source") or None
    if source is not None and source not in SOURCES:
        raise not_found(f"Unknown alert source {source!r}; one of {', '.join(SOURCES)}.")
    payload = json_body(request, MAX_ALERT_REQUEST_BYTES)
    source = await admit_source(source, payload, config, request.headers, request.body, secrets, time.time())
    alerts = parse_alerts(payload, source)
    now = datetime.now(UTC)
    if request.params.get("dryRun", "").lower() in {"true", "1"}:
        groups = group_alerts(alerts, config)
        mails = [
            preview(group, config.receiver(group.receiver), settings, now)
            for group in groups
            if config.receiver(group.receiver).mode == "immediate"
        ]
        answered = [r.answer() for r in receipts(groups, config)]
        return ApiAnswer(200, {"accepted": len(alerts), "dryRun": True, "groups": answered, "mails": mails})
    groups_written = await ingest(alerts, config, settings, store, now)
    return ApiAnswer(202, {"accepted": len(alerts), "groups": [r.answer() for r in groups_written]})


async def run_digest(
    request: ApiRequest, settings: Settings, config: NotifyConfig, store: Store, graph: Callable[[], GraphClient]
) -> ApiAnswer:
    """Run a configured mailbox digest now (200 with what it did); `?dryRun=true` answers the mail it would
    send, without sending or tagging. A digest Graph refuses answers 502 with Graph's code."""
    name = request.route.get("name", "")
    digest = next((d for d in config.digests if d.name == name), None)
    if digest is None:
        known = ", ".join(d.name for d in config.digests) or "none"
        raise not_found(f"No digest named {name!r} is configured (NOTIFY_CONFIG digests: {known}).")
    dry_run = request.params.get("dryRun", "").lower() in {"true", "1"}
    run = await run_mailbox_digest(digest, settings, graph(), store, datetime.now(UTC), dry_run=dry_run)
    if run.outcome == "failed" and run.error:
        raise AppError(502, run.error["code"], f"Digest {name!r} failed: {run.error['message']}")
    return ApiAnswer(200, run.answer())


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
