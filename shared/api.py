"""The HTTP API as plain async handlers: `ApiRequest` in, `ApiAnswer` out, errors turned into answers here.

The intake path (`post_mail` up to the enqueue) imports nothing of msgraph or azure-identity, so a webhook
is acknowledged fast and a cold start stays short.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .alert_answers import preview, receipts
from .alerts.auth import SecretSource, Signed, admit_source
from .alerts.dispatch import Dispatcher
from .alerts.grouping import group_alerts
from .alerts.intake import SOURCES, parse_alerts
from .alerts.notify import Notifier
from .attachments import MailForm, is_form, resolve_attachments
from .config import Settings
from .digests.alerts import AlertDigestOutcome, preview_alert_digest
from .digests.alerts import run_alert_digest as run_alert_digest_now
from .digests.mailbox import DigestOutcome, run_mailbox_digest
from .errors import (
    AppError,
    Conflict,
    Detail,
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    UpstreamRefused,
)
from .mail import (
    APP_ID_PREFIX,
    ID_PATTERN,
    MAX_JSON_BYTES,
    MailRequest,
    canonical_id,
    check_mail,
    parse_mail,
    payload_hash,
)
from .outbox import submit_mail
from .pacer import intake_warning, lane_of
from .routes import Route
from .routing_file import NotifyConfig
from .store import Store
from .text import request_json

if TYPE_CHECKING:
    from .graph import GraphClient

log = logging.getLogger("notifier.api")

MAX_REQUEST_BYTES = MAX_JSON_BYTES
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


RETRY_AFTER_SECONDS = 10  # what a 503 asks callers to wait
# The one table from error type to HTTP status (the nearest listed base class decides; an AppError not
# listed here, such as a queue's InvalidMessage, would be a bug in the API: 500).
STATUS: dict[type[AppError], int] = {
    InvalidRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    UpstreamRefused: 502,
    Unavailable: 503,
}


def status_of(error: AppError) -> int:
    return next((STATUS[kind] for kind in type(error).__mro__ if kind in STATUS), 500)


def _foreign(error: Exception) -> AppError | None:
    """Errors of the Storage SDKs that mean "not reachable now" rather than "this request is wrong" (no
    connection, no answer, a 5xx) as an AppError; None for anything else, which is a 500."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    unreachable = isinstance(error, (ServiceRequestError, ServiceResponseError))
    if unreachable or (isinstance(error, HttpResponseError) and (error.status_code or 0) >= 500):
        return Unavailable("The app's storage cannot be reached now; try again shortly.")
    return None


def _error_answer(error: AppError) -> ApiAnswer:
    status = status_of(error)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else {}
    return ApiAnswer(status, error.body(), headers)


async def answer(handler: Handler, request: ApiRequest) -> ApiAnswer:
    """Run a handler; AppErrors become their answers, Storage outages a 503 with Retry-After, anything else
    a 500 without internals. The log names the path, never the query (it may hold `code=<function key>`)."""
    try:
        return await handler(request)
    except AppError as error:
        return _error_answer(error)
    except Exception as error:
        path = urlsplit(request.url).path
        mapped = _foreign(error)
        if mapped is not None:
            log.error("%s %s: %s", request.method, path, type(error).__name__)
            return _error_answer(mapped)
        incident = uuid.uuid4().hex
        log.exception("unhandled error in %s %s (incident %s)", request.method, path, incident)
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


def query_flags(request: ApiRequest, *known: str) -> dict[str, bool]:
    """The request's query parameters, each of which must be one of `known` (boolean flags, `true` or `false`
    in any case) or the function key's `code`. Anything else is a 400: a misspelt `dryRun` must never fall
    back to the real action. The Functions host joins repeated parameters with `,`, so `true,true` is refused
    too."""
    allowed = ", ".join(known) or "none"
    flags = dict.fromkeys(known, False)
    problems = []
    for name, value in request.params.items():
        if name == "code":  # the function key, when a caller passes it in the URL
            continue
        if name not in flags:
            problems.append(Detail(name, f"unknown query parameter; known: {allowed}"))
        elif value.lower() not in {"true", "false"}:
            problems.append(Detail(name, "must be true or false, given once"))
        else:
            flags[name] = value.lower() == "true"
    if problems:
        raise InvalidRequest(f"Query parameter {problems[0].field!r}: {problems[0].message}.", problems)
    return flags


def json_body(request: ApiRequest, limit: int = MAX_REQUEST_BYTES) -> Any:
    """The request's JSON body, after the media type and size checks."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"Send the body as application/json, not {media_type or 'no media type'}.")
    if len(request.body) > limit:
        raise PayloadTooLarge(f"The body has {len(request.body)} bytes; at most {limit} are accepted.")
    return request_json(request.body)


async def post_mail(request: ApiRequest, settings: Settings, store: Store) -> ApiAnswer:
    """Validate, record status `queued`, enqueue on `mail-outbox`; idempotent by `id`/`Idempotency-Key`.

    The body is the mail's JSON, or a `multipart/form-data` form of it with file parts (`shared.attachments`):
    the form's mail part is checked before any file is stored, its files are stored as blobs before the mail is
    submitted, and deleted again when the submission is refused."""
    query_flags(request)
    content_type = request.headers.get("content-type", "")
    form = MailForm(request.body, content_type, settings.mail_max_message_bytes) if is_form(content_type) else None
    mail = await form.mail() if form is not None else parse_mail(json_body(request))
    given_id = _given_id(request, mail)
    mail = mail.model_copy(update={"id": given_id or uuid.uuid4().hex})
    prefixes = settings.mail_api_blob_prefixes  # the app's own files of this mail come only from its form
    resolved = await resolve_attachments(store, mail, prefixes, error=InvalidRequest, own_files=False)
    mail = check_mail(resolved, settings)
    if form is None:
        return await _submit(store, settings, mail)
    try:
        mail = check_mail(await form.store_files(store, mail), settings)
        if given_id is not None and await _submitted_before(store, mail):
            await _delete_blobs(store, form.stored)  # files this replay created anew: the mail was done with its own
            return _queued(mail, replay=True)
        return await _submit(store, settings, mail)
    except Exception:
        if not await _submitted_before(store, mail, quiet=True):  # a concurrent replay may be using them
            await _delete_blobs(store, form.stored)
        raise


def _given_id(request: ApiRequest, mail: MailRequest) -> str | None:
    """The id the caller gave the mail, in the body or as `Idempotency-Key` (None: the app makes one up)."""
    key = request.headers.get("idempotency-key")
    if key is not None and not ID_PATTERN.match(key):
        raise InvalidRequest(
            "The Idempotency-Key header is not a valid id.",
            [Detail("Idempotency-Key", "1-64 letters, digits or . _ : -")],
        )
    if key is not None and mail.id is not None and canonical_id(key) != canonical_id(mail.id):
        raise InvalidRequest(
            "The body's id and the Idempotency-Key header differ.",
            [Detail("id", "differs from the Idempotency-Key header")],
        )
    given = mail.id or key
    if given is not None and given.lower().startswith(APP_ID_PREFIX):
        where = "id" if mail.id else "Idempotency-Key"
        raise InvalidRequest(
            f"Mail ids starting with {APP_ID_PREFIX!r} are the app's own.",
            [Detail(where, f"{APP_ID_PREFIX!r} ids belong to the app's alert and digest mails")],
        )
    return canonical_id(given) if given is not None else None


async def _submitted_before(store: Store, mail: MailRequest, *, quiet: bool = False) -> bool:
    """Whether this very mail was submitted under its id already (a form sent again: its files are the first
    submission's, or, once that mail was done with them, stored anew). `quiet`: a Storage failure is a no."""
    assert mail.id is not None
    try:
        existing = await store.statuses.get(mail.id)
    except Exception:
        if not quiet:
            raise
        return False
    return existing is not None and existing.payload_hash == payload_hash(mail.dump())


async def _delete_blobs(store: Store, blobs: list[str]) -> None:
    """Delete the blobs a refused form stored; one that cannot be deleted now is left (and logged)."""
    outcomes = await asyncio.gather(*(store.attachments.delete(blob) for blob in blobs), return_exceptions=True)
    for blob, outcome in zip(blobs, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            log.warning("attachment blob %s of a refused mail not deleted: %s", blob, type(outcome).__name__)


async def _submit(store: Store, settings: Settings, mail: MailRequest) -> ApiAnswer:
    """Submit a checked mail; its answer says its lane, and warns when its mailbox's budget is short."""
    replay, warning = await asyncio.gather(submit_mail(store, mail), intake_warning(settings, store, mail))
    return _queued(mail, replay, warning)


def _queued(mail: MailRequest, replay: bool, warning: dict[str, Any] | None = None) -> ApiAnswer:
    body: dict[str, Any] = {"id": mail.id, "status": "queued", "lane": str(lane_of(mail))}
    if warning is not None:
        body["warning"] = warning
    warnings = mail.warnings() + ([warning] if warning is not None else [])
    if warnings:
        body["warnings"] = warnings
    accepted = ApiAnswer(202, body, {"Location": f"/api/mail/{mail.id}"})
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
    dry_run = query_flags(request, "dryRun")["dryRun"]
    source = request.route.get("source") or None
    if source is not None and source not in SOURCES:
        raise NotFound(f"Unknown alert source {source!r}; one of {', '.join(SOURCES)}.")
    payload = json_body(request, MAX_ALERT_REQUEST_BYTES)
    admission = await admit_source(source, payload, config, request.headers, request.body, secrets, time.time())
    source = admission.source
    alerts = parse_alerts(payload, source, config.severity_map)
    now = datetime.now(UTC)
    if dry_run:
        groups = group_alerts(alerts, config)
        mails = [
            preview(group, config.receiver(group.receiver), settings, now)
            for group in groups
            if config.receiver(group.receiver).mode == "immediate"
        ]
        answered = [r.answer() for r in receipts(groups, config)]
        return ApiAnswer(200, {"accepted": len(alerts), "dryRun": True, "groups": answered, "mails": mails})
    try:
        if not await _first_sight(store, admission.signed, now.timestamp()):
            log.warning("a %s request was replayed (its signature was seen lately): nothing accepted", source)
            return ApiAnswer(202, {"accepted": 0, "groups": [], "replayed": True})
        written = await Dispatcher(config, store, Notifier(settings, store)).ingest(alerts, now)
    except BaseException:  # the sender's retry of a request that failed (its check or its intake) is no replay
        await _forget(store, admission.signed, now.timestamp())
        raise
    answered = [r.answer() for r in receipts(written.groups, config, written.mails)]
    return ApiAnswer(202, {"accepted": len(alerts), "groups": answered})


async def _first_sight(store: Store, signed: tuple[Signed, ...], now: float) -> bool:
    """Whether a signed request is seen for the first time within the time a replay of it would pass."""
    for passed in signed:
        if not await store.replays.first_sight(passed.source, passed.signature, passed.hold, now):
            return False
    return True


async def _forget(store: Store, signed: tuple[Signed, ...], now: float) -> None:
    """Forget a failed request's signatures; one that cannot be forgotten now makes its retry a replay."""
    for passed in signed:
        try:
            await store.replays.forget(passed.source, passed.signature, passed.hold, now)
        except Exception as error:
            log.warning("the %s signature of a failed request not forgotten: %s", passed.source, type(error).__name__)


async def run_digest(
    request: ApiRequest, settings: Settings, config: NotifyConfig, store: Store, graph: Callable[[], GraphClient]
) -> ApiAnswer:
    """Run a configured mailbox digest now (200 with what it did); `?dryRun=true` answers the mail it would
    send, without sending or tagging. A digest Graph refuses answers 502 with Graph's code; one that
    another run holds now, 409 `digest_running`."""
    dry_run = query_flags(request, "dryRun")["dryRun"]
    name = request.route.get("name", "")
    digest = next((d for d in config.digests if d.name == name), None)
    if digest is None:
        known = ", ".join(d.name for d in config.digests) or "none"
        raise NotFound(f"No digest named {name!r} is configured (NOTIFY_CONFIG digests: {known}).")
    run = await run_mailbox_digest(digest, settings, graph(), store, datetime.now(UTC), dry_run=dry_run)
    if run.outcome == DigestOutcome.RUNNING:
        raise Conflict(f"Digest {name!r} is being run by another run now; try again later.", code="digest_running")
    if run.outcome == DigestOutcome.FAILED and run.error:
        raise UpstreamRefused(f"Digest {name!r} failed: {run.error['message']}", code=run.error["code"])
    return ApiAnswer(200, run.answer())


async def run_alert_digest(request: ApiRequest, settings: Settings, config: NotifyConfig, store: Store) -> ApiAnswer:
    """Send a `mode: digest` receiver's alert digest now (200 with what it did); `?dryRun=true` answers the mail
    it would send, and sends and releases nothing. An unknown receiver is a 404, one that is not `mode: digest`
    a 409 `not_a_digest_receiver`, one whose digest another run holds now a 409 `digest_running`."""
    dry_run = query_flags(request, "dryRun")["dryRun"]
    name = request.route.get("receiver", "")
    receiver = next((r for r in config.receivers if r.name == name), None)
    digests = [r.name for r in config.receivers if r.mode == "digest"]
    if receiver is None:
        known = ", ".join(digests) or "none"
        raise NotFound(f"No receiver named {name!r} is configured (NOTIFY_CONFIG digest receivers: {known}).")
    if receiver.mode != "digest":
        raise Conflict(
            f"Receiver {name!r} has mode: {receiver.mode}; only a mode: digest receiver has an alert digest.",
            code="not_a_digest_receiver",
        )
    now = datetime.now(UTC)
    if dry_run:
        return ApiAnswer(200, (await preview_alert_digest(receiver, settings, store, now)).answer())
    run = await run_alert_digest_now(receiver, settings, store, now)
    if run.outcome == AlertDigestOutcome.RUNNING:
        raise Conflict(
            f"The alert digest of {name!r} is being run by another run now; try again later.", code="digest_running"
        )
    return ApiAnswer(200, run.answer())


def no_such_route(request: ApiRequest, table: tuple[Route, ...]) -> ApiAnswer:
    """The answer for a path or method no endpoint serves: 405 with `Allow` when the path is a route's,
    404 otherwise."""
    path = request.route.get("path", "")
    allowed = sorted({method for route in table if route.matches(path) for method in route.methods})
    if allowed:
        message = f"{request.method} is not allowed here; use {', '.join(allowed)}."
        answer = _error_answer(MethodNotAllowed(message))
        answer.headers["Allow"] = ", ".join(allowed)
        return answer
    return _error_answer(NotFound("No such endpoint; the API is described at /api/openapi.json."))


async def get_mail(request: ApiRequest, store: Store) -> ApiAnswer:
    query_flags(request)
    mail_id = request.route.get("id", "")
    if not ID_PATTERN.match(mail_id):
        raise InvalidRequest("That is not a valid mail id.", [Detail("id", "1-64 letters, digits or . _ : -")])
    status = await store.statuses.get(canonical_id(mail_id))
    if status is None:
        raise NotFound(f"No mail with id {mail_id!r}.")
    return ApiAnswer(200, status.answer())


HEALTH_CACHE_SECONDS = 15  # health is anonymous: its checks (Key Vault, Graph) run at most this often


async def run_health_checks(
    settings: Settings | Exception, checks: dict[str, Callable[[], Awaitable[Any]]]
) -> dict[str, dict[str, Any]]:
    """Each check with its time and outcome, and a short reason for a failure that carries no secret."""
    results: dict[str, dict[str, Any]] = {}
    if isinstance(settings, Exception):
        results["config"] = {"ok": False, "error": str(settings)}
    else:
        results["config"] = {"ok": True, "mode": settings.graph_auth_mode}
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            outcome = await asyncio.wait_for(check(), timeout=10)
            results[name] = {"ok": True, **(outcome if isinstance(outcome, dict) else {})}  # what a check reports
        except Exception as error:
            results[name] = {"ok": False, "error": type(error).__name__ + _safe_reason(error)}
            log.warning("health check %s failed: %s", name, results[name]["error"])
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return results


class HealthCache:
    """The last health results of this event loop, reused for `ttl` seconds whether they passed or failed;
    callers arriving while the checks run wait for that one run."""

    def __init__(self, ttl: float = HEALTH_CACHE_SECONDS) -> None:
        self._ttl = ttl
        self._results: dict[str, dict[str, Any]] | None = None
        self._at = 0.0
        self._running: asyncio.Future[dict[str, dict[str, Any]]] | None = None

    async def results(self, run: Callable[[], Awaitable[dict[str, dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
        if self._results is not None and time.monotonic() - self._at < self._ttl:
            return self._results
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(run())
        results = await asyncio.shield(self._running)
        self._results, self._at = results, time.monotonic()
        return results


def health_answer(results: dict[str, dict[str, Any]], *, detailed: bool) -> ApiAnswer:
    """503 when any check fails. The anonymous answer says only ok or not per kind of check (digests as one),
    naming no digest, mailbox, secret or upstream error; the keyed one (`/api/health/details`) has it all."""
    healthy = all(result["ok"] for result in results.values())
    status = 200 if healthy else 503
    if detailed:
        return ApiAnswer(status, {"status": "ok" if healthy else "degraded", "checks": results})
    summary: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        kind = "digests" if name.startswith("digest:") else name
        summary[kind] = {"ok": summary.get(kind, {"ok": True})["ok"] and bool(result["ok"])}
        if "highestDayPercent" in result:  # budgets: a share, naming no mailbox
            summary[kind]["highestDayPercent"] = result["highestDayPercent"]
    return ApiAnswer(status, {"status": "ok" if healthy else "degraded", "checks": summary})


def _safe_reason(error: Exception) -> str:
    """A short reason that cannot carry a secret: our own CredentialError text, or an HTTP status."""
    from_module = type(error).__module__
    if from_module.startswith("shared."):
        return f": {error}"[:200]
    status = getattr(error, "status_code", None) or getattr(error, "status", None)
    return f" (HTTP {status})" if status else ""
