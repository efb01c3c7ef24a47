"""The adapter between Azure Functions and the app: bindings in, plain calls into `shared`, answers out.

The only module besides `function_app.py` that knows Azure Functions types. Collaborators (settings,
store, Graph client, sender) are built once per worker process and event loop.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from . import api, routes
from .alerts.auth import SecretSource
from .alerts.dispatch import Dispatcher
from .alerts.inbox import ingest_message
from .alerts.notify import Notifier
from .config import ConfigError, Settings, settings
from .delivery import delivery_modes
from .digests.mailbox import check_digest
from .digests.scheduled import run_due_digests
from .errors import InvalidMessage
from .logs import quiet_libraries
from .loop_cache import LoopCache, close_all
from .pacer import budget_use
from .routing_file import NotifyConfig, notify_config
from .store import Store, store

if TYPE_CHECKING:
    from .graph import GraphClient

log = logging.getLogger("notifier")


def start_up() -> None:
    """At import of the app: check the settings and the routing file (a bad one stops the app with a message
    naming it) and set the libraries' log level."""
    config = settings()
    quiet_libraries(config.library_log_level)
    notify_config(config)
    modes = delivery_modes(config.mail_delivery_mode)
    log.info("mail delivery: MAIL_DELIVERY_MODE=%s: %s", modes.setting, modes.describe()["why"])


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
    return api.ApiRequest(
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


class Collaborators:
    """What an endpoint works with, made on first use from the process's settings: the store, the routing
    file, and (loaded only by the endpoints that need them) the Graph client and the Key Vault secrets."""

    @functools.cached_property
    def settings(self) -> Settings:
        return settings()

    @functools.cached_property
    def store(self) -> Store:
        return store(self.settings.storage)

    @functools.cached_property
    def notify(self) -> NotifyConfig:
        return notify_config(self.settings)

    def graph(self) -> GraphClient:
        from .graph import graph_client  # msgraph stays out of the intake paths

        return graph_client(self.settings)

    def secrets(self) -> SecretSource:
        from .credentials import vault_secrets  # Key Vault code only for sources that authenticate

        return vault_secrets(self.settings)


Endpoint = Callable[[api.ApiRequest, Collaborators], Awaitable[api.ApiAnswer]]
HttpFunction = Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]


def http_endpoint(endpoint: Endpoint) -> HttpFunction:
    """The one HTTP adapter: the host's request becomes an `ApiRequest`, the endpoint runs with this process's
    collaborators, and its answer (or its error, mapped in `api.answer`) becomes the host's response."""

    @functools.wraps(endpoint)
    async def adapter(req: func.HttpRequest) -> func.HttpResponse:
        async def handle(request: api.ApiRequest) -> api.ApiAnswer:
            return await endpoint(request, Collaborators())

        return _response(await api.answer(handle, _request(req)))

    return adapter


@http_endpoint
async def post_mail(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    return await api.post_mail(request, app.settings, app.store)


@http_endpoint
async def get_mail(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    return await api.get_mail(request, app.store)


@http_endpoint
async def post_alerts(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    return await api.post_alerts(request, app.settings, app.notify, app.store, app.secrets)


@http_endpoint
async def run_digest(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    return await api.run_digest(request, app.settings, app.notify, app.store, app.graph)


@http_endpoint
async def health(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    api.query_flags(request)
    return api.health_answer(await _health.get(None, api.HealthCache).results(_health_results), detailed=False)


@http_endpoint
async def health_details(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    api.query_flags(request)
    return api.health_answer(await _health.get(None, api.HealthCache).results(_health_results), detailed=True)


@http_endpoint
async def openapi(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    from .openapi import openapi_document  # its models cost a cold start about 13 ms: loaded when asked for

    api.query_flags(request)
    return api.ApiAnswer(200, openapi_document())


@http_endpoint
async def no_such_route(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    return api.no_such_route(request, routes.ROUTES)


_health: LoopCache[api.HealthCache] = LoopCache()


async def _health_results() -> dict[str, Any]:
    try:
        config = settings()
    except ConfigError as error:
        return await api.run_health_checks(error, {})
    from .graph import graph_client  # health checks Graph on purpose; intake paths never import it

    graph = graph_client(config)
    checks: dict[str, Any] = {"storage": store(config.storage).ping}
    if config.graph_auth_mode == "keyvault":
        checks["keyVault"] = graph.read_credential
    checks["graphToken"] = graph.token_check
    for digest in notify_config(config).digests:
        checks[f"digest:{digest.name}"] = functools.partial(check_digest, digest, graph)
    if config.budget_messages_per_minute or config.budget_recipients_per_day:
        checks["budgets"] = functools.partial(budget_use, config, store(config.storage))
    results = await api.run_health_checks(config, checks)
    results["delivery"] = delivery_modes(config.mail_delivery_mode).health()
    return results


def dispatcher(config: Settings) -> Dispatcher:
    """The alert dispatcher of this process: its store, and the notify stage handing notices to it."""
    target = store(config.storage)
    return Dispatcher(notify_config(config), target, Notifier(config, target))


async def alerts_inbox(message: func.QueueMessage) -> None:
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
        await store(config.storage).alert_queues.poison_flush(text)
        log.warning("alerts-flush message %s poisoned: %s", message.id, error)
        return
    log.info(json.dumps({"alertsFlush": {"group": done.group, "outcome": done.outcome, "mail": done.mail_id}}))


async def digest_timer(timer: func.TimerRequest) -> None:
    """Every minute: run the digests whose schedule is due, each occurrence once across instances."""

    def graph() -> GraphClient:
        from .graph import graph_client  # only when a mailbox digest runs

        return graph_client(config)

    config = settings()
    ticks = await run_due_digests(notify_config(config), config, store(config.storage), graph, datetime.now(UTC))
    ran = [{"digest": t.key, "occurrence": t.ran.isoformat(), "outcome": t.outcome} for t in ticks if t.ran]
    if ran or timer.past_due:
        log.info(json.dumps({"digestTimer": ran, "pastDue": timer.past_due}))


async def bounce_check(timer: func.TimerRequest) -> None:
    from .bounces import check_bounces
    from .graph import graph_client

    config = settings()
    checks = await check_bounces(config, store(config.storage), graph_client(config), datetime.now(UTC))
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


def _sender() -> Any:
    from .graph import graph_client
    from .outbox import Sender

    config = settings()
    return Sender(config, store(config.storage), graph_client(config))


async def shutdown() -> None:
    """Close this event loop's cached Storage, Key Vault and Graph clients (a host stopping cleanly, tests)."""
    await close_all()
