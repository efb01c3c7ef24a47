"""The adapter between Azure Functions and the app: bindings in, plain calls into `shared`, answers out.

The only module besides `function_app.py` that knows Azure Functions types. The HTTP endpoints are in
`shared.endpoints`; collaborators (settings, store, Graph client, sender) are built once per worker process
and event loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from .config import DELIVERY_MODES, Settings, settings
from .errors import InvalidMessage
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


def start_up() -> None:
    """At import of the app: check the settings and the routing file (a bad one stops the app with a message
    naming it) and set the libraries' log level."""
    config = settings()
    quiet_libraries(config.library_log_level)
    notify_config(config)
    mode = config.mail_delivery_mode
    log.info("mail delivery: MAIL_DELIVERY_MODE=%s: %s", mode, DELIVERY_MODES[mode])
    log.info("recipient fence: %s", config.recipient_fence())


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
            return await endpoint(request, endpoints.Collaborators())  # type: ignore[no-any-return]

        return _response(await api.answer(handle, _request(req)))

    adapter.__name__ = adapter.__qualname__ = name
    return adapter


post_mail = http_endpoint("post_mail")
get_mail = http_endpoint("get_mail")
post_alerts = http_endpoint("post_alerts")
run_digest = http_endpoint("run_digest")
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
    from .bounces import check_bounces
    from .graph import graph_client

    config = settings()
    checks = await check_bounces(config, _store(config), graph_client(config), datetime.now(UTC))
    log.info(json.dumps({"bounceCheck": [check.__dict__ for check in checks], "pastDue": timer.past_due}))


async def mail_outbox(message: func.QueueMessage) -> None:
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
