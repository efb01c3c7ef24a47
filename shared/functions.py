"""The adapter between Azure Functions and the app: bindings in, plain calls into `shared`, answers out.

The only module besides `function_app.py` that knows Azure Functions types. The HTTP endpoints are in
`shared.endpoints`; collaborators (settings, store, Graph client, sender) are built once per worker process
and event loop.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from . import routes
from .config import DELIVERY_MODES, ConfigError, Settings, settings, storage_account
from .errors import InvalidMessage, NotConfigured
from .logs import quiet_libraries
from .loop_cache import close_all
from .routing_file import notify_config

# What indexing the app needs is above: the settings and the routing file, checked at start-up. Each trigger's
# own code (the API, the alert pipeline, the sender, the digests) is imported by its first invocation, so a
# worker that only indexes loads none of it and a cold start's first mail loads only the sender's.
if TYPE_CHECKING:
    from . import api
    from .alerts.dispatch import Dispatcher
    from .graph import GraphClient
    from .outbox import Sender
    from .store import Store

log = logging.getLogger("notifier")


HOLD_SECONDS = 300  # how long a queue message that arrives while the app is not configured is put back for
NEXT_STEPS = (
    "On a first deployment this is expected until the admin steps have run: scripts/entra-app.sh (it prints "
    "the app id), then `azd env set GRAPH_CLIENT_ID <appId> && azd provision` (docs/deploy.md). "
    "Otherwise correct what is named above in the Function App's settings or the routing file; the app restarts "
    "with its settings."
)
# what answers while the app is not configured: the health endpoints, which say so
_WITHOUT_CONFIGURATION = frozenset({routes.HEALTH.function, routes.HEALTH_DETAILS.function})


def configuration_problem() -> ConfigError | None:
    """Why the app cannot work with its settings and routing file, or None when it can: checked at start-up and
    again by each invocation (both are cached once they pass)."""
    try:
        notify_config(settings())
    except ConfigError as error:
        return error
    return None


def start_up() -> None:
    """At import of the app: check the settings and the routing file and set the libraries' log level. A
    problem does not stop the app: its functions are indexed and do nothing but say so (the health endpoints,
    a 503 `not_configured` elsewhere, one log message naming the setting and what to run next)."""
    problem = configuration_problem()
    if problem is not None:
        quiet_libraries("WARNING")
        log.error(
            "The app is not configured: %s. Its functions are indexed and wait: /api/health answers 503 with "
            "config failing (/api/health/details names the problem), every other endpoint 503 not_configured, "
            "queue messages are put back for %d s each time they arrive, timers skip their runs. %s",
            problem,
            HOLD_SECONDS,
            NEXT_STEPS,
        )
        return
    config = settings()
    quiet_libraries(config.library_log_level)
    mode = config.mail_delivery_mode
    log.info("mail delivery: MAIL_DELIVERY_MODE=%s: %s", mode, DELIVERY_MODES[mode])
    log.info("recipient fence: %s", config.recipient_fence())


async def _held(message: func.QueueMessage, queue: str) -> bool:
    """True when the app is not configured: the message is then sent again to its queue, visible in
    HOLD_SECONDS, and this one is done (the host deletes it). A copy rather than a failed invocation, since the
    host's five quick redeliveries would move every message to the poison queue; the copy starts again at
    dequeue count 1 and a new time to live, so messages wait as long as the configuration is missing. Should
    even `AzureWebJobsStorage` be unusable, this raises and the host redelivers (then poisons) as for any
    failure."""
    problem = configuration_problem()
    if problem is None:
        return False
    from .store import store

    text = message.get_body().decode("utf-8", "replace")
    await store(storage_account(os.environ)).storage.send_message(queue, text, HOLD_SECONDS)
    log.warning(
        "%s message %s put back for %d s: the app is not configured (%s)", queue, message.id, HOLD_SECONDS, problem
    )
    return True


def _skipped(timer: str) -> bool:
    """True when the app is not configured: the timer's run is skipped (the next tick tries again)."""
    problem = configuration_problem()
    if problem is not None:
        log.warning("%s skipped: the app is not configured (%s)", timer, problem)
    return problem is not None


def _query(req: func.HttpRequest) -> dict[str, str]:
    """The query as the caller wrote it: the host drops empty values (`?dryRun` would vanish) and joins
    repeated ones with `,`; the URL keeps both, so it is read from there when it has a query."""
    query = urlsplit(req.url).query
    if not query:
        return dict(req.params)
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params[name] = f"{params[name]},{value}" if name in params else value
    return params


def _request(req: func.HttpRequest) -> api.ApiRequest:
    from .api import ApiRequest

    return ApiRequest(
        method=req.method,
        url=req.url,
        headers={k.lower(): v for k, v in req.headers.items()},
        params=_query(req),
        route=dict(req.route_params),
        body=req.get_body() or b"",
    )


def _response(answer: api.ApiAnswer) -> func.HttpResponse:
    if answer.body is None:
        return func.HttpResponse(status_code=answer.status, headers=answer.headers)
    return func.HttpResponse(
        json.dumps(answer.body),
        status_code=answer.status,
        headers=answer.headers,
        mimetype="application/json",
        charset="utf-8",
    )


HttpFunction = Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]


def http_endpoint(name: str) -> HttpFunction:
    """The one HTTP adapter, for the endpoint `name` of `shared.endpoints`: the host's request becomes an
    `ApiRequest`, the endpoint runs with this process's collaborators, and its answer (or its error, mapped in
    `api.answer`) becomes the host's response."""

    async def adapter(req: func.HttpRequest) -> func.HttpResponse:
        from . import api, endpoints

        endpoint = getattr(endpoints, name)

        async def handle(request: api.ApiRequest) -> api.ApiAnswer:
            if name not in _WITHOUT_CONFIGURATION and configuration_problem() is not None:
                raise NotConfigured(
                    "The app is not configured yet: its keyed /api/health/details names what is missing, and its "
                    "start-up log says what to run."
                )
            return await endpoint(request, endpoints.Collaborators())  # type: ignore[no-any-return]

        return _response(await api.answer(handle, _request(req)))

    adapter.__name__ = adapter.__qualname__ = name
    return adapter


post_mail = http_endpoint("post_mail")
get_mail = http_endpoint("get_mail")
post_alerts = http_endpoint("post_alerts")
run_digest = http_endpoint("run_digest")
run_alert_digest = http_endpoint("run_alert_digest")
health = http_endpoint("health")
health_details = http_endpoint("health_details")
openapi = http_endpoint("openapi")
no_such_route = http_endpoint("no_such_route")


def _store(config: Settings) -> Store:
    """The process's store (the Storage SDKs load with its first call)."""
    from .store import store

    return store(config.storage)


def dispatcher(config: Settings) -> Dispatcher:
    """The alert dispatcher of this process: its store, and the notify stage handing notices to it."""
    from .alerts.dispatch import Dispatcher
    from .alerts.notify import Notifier

    target = _store(config)
    return Dispatcher(notify_config(config), target, Notifier(config, target))


async def alerts_inbox(message: func.QueueMessage) -> None:
    if await _held(message, routes.ALERTS_INBOX):
        return
    from .alerts.inbox import ingest_message

    config = settings()
    outcome = await ingest_message(
        message.get_body().decode("utf-8", "replace"),
        message.id or "",
        dispatcher(config),
        config,
        datetime.now(UTC),
    )
    log.info(json.dumps({"alertsInbox": {"id": message.id, "outcome": outcome.outcome, "alerts": outcome.alerts}}))


async def alerts_flush(message: func.QueueMessage) -> None:
    if await _held(message, routes.ALERTS_FLUSH):
        return
    config = settings()
    text = message.get_body().decode("utf-8", "replace")
    try:
        done = await dispatcher(config).flush(text)
    except InvalidMessage as error:  # not a flush message: nothing can ever come of it
        await _store(config).alert_queues.poison_flush(text)
        log.warning("alerts-flush message %s poisoned: %s", message.id, error)
        return
    log.info(json.dumps({"alertsFlush": {"group": done.group, "outcome": done.outcome, "mail": done.mail_id}}))


async def digest_timer(timer: func.TimerRequest) -> None:
    """Every minute: run the digests whose schedule is due, each occurrence once across instances."""
    if _skipped("digest_timer"):
        return
    from .digests.scheduled import run_due_digests

    def graph() -> GraphClient:
        from .graph import graph_client  # only when a mailbox digest runs

        return graph_client(config)

    config = settings()
    ticks = await run_due_digests(notify_config(config), config, _store(config), graph, datetime.now(UTC))
    ran = [{"digest": t.key, "occurrence": t.ran.isoformat(), "outcome": t.outcome} for t in ticks if t.ran]
    if ran or timer.past_due:
        log.info(json.dumps({"digestTimer": ran, "pastDue": timer.past_due}))


async def bounce_check(timer: func.TimerRequest) -> None:
    if _skipped("bounce_check"):
        return
    from .bounces import check_bounces
    from .graph import graph_client

    config = settings()
    checks = await check_bounces(config, _store(config), graph_client(config), datetime.now(UTC))
    log.info(json.dumps({"bounceCheck": [check.__dict__ for check in checks], "pastDue": timer.past_due}))


async def mail_outbox(message: func.QueueMessage) -> None:
    if await _held(message, routes.MAIL_OUTBOX):
        return
    delivery = await _sender().deliver(
        message.get_body().decode("utf-8", "replace"), message.id or "", message.dequeue_count or 1
    )
    log.info(
        json.dumps(
            {
                "delivery": {
                    "id": delivery.mail_id,
                    "outcome": delivery.outcome,
                    "detail": delivery.detail,
                    "dequeueCount": message.dequeue_count,
                }
            }
        )
    )


def _sender() -> Sender:
    from .graph import graph_client
    from .outbox import Sender

    config = settings()
    return Sender(config, _store(config), graph_client(config))


async def shutdown() -> None:
    """Close this event loop's cached Storage, Key Vault and Graph clients (a host stopping cleanly, tests)."""
    await close_all()
