"""The HTTP endpoints: each takes an `ApiRequest` and the process's collaborators and answers an `ApiAnswer`.

Loaded with the first HTTP request (`shared.functions` adapts the host's request and answer), so indexing the
app and the queue and timer triggers never import the API's code.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from . import api, routes
from .config import ConfigError, Settings, settings
from .delivery import delivery_modes
from .digests.mailbox import check_digest
from .loop_cache import LoopCache
from .pacer import budget_use
from .routing_file import NotifyConfig, notify_config
from .store import Store, store

if TYPE_CHECKING:
    from .alerts.auth import SecretSource
    from .graph import GraphClient


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


async def post_mail(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    return await api.post_mail(request, app.settings, app.store)


async def get_mail(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    return await api.get_mail(request, app.store)


async def post_alerts(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    return await api.post_alerts(request, app.settings, app.notify, app.store, app.secrets)


async def run_digest(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    return await api.run_digest(request, app.settings, app.notify, app.store, app.graph)


async def run_alert_digest(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    return await api.run_alert_digest(request, app.settings, app.notify, app.store)


async def health(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    api.query_flags(request)
    return api.health_answer(await _health.get(None, api.HealthCache).results(_health_results), detailed=False)


async def health_details(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    api.query_flags(request)
    return api.health_answer(await _health.get(None, api.HealthCache).results(_health_results), detailed=True)


async def openapi(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    from .openapi import openapi_document  # its models cost a cold start about 13 ms: loaded when asked for

    api.query_flags(request)
    return api.ApiAnswer(200, openapi_document())


async def no_such_route(request: api.ApiRequest, app: Collaborators) -> api.ApiAnswer:
    return api.no_such_route(request, routes.ROUTES)


_health: LoopCache[api.HealthCache] = LoopCache()


async def _health_results() -> dict[str, Any]:
    try:
        config = settings()
        notify = notify_config(config)
    except ConfigError as error:  # not configured: the one failing check, named only in the keyed details
        return await api.run_health_checks(error, {})
    from .graph import graph_client  # health checks Graph on purpose; intake paths never import it

    graph = graph_client(config)
    checks: dict[str, Any] = {"storage": store(config.storage).ping}
    if config.graph_auth_mode == "keyvault":
        checks["keyVault"] = graph.read_credential
    checks["graphToken"] = graph.token_check
    for digest in notify.digests:
        checks[f"digest:{digest.name}"] = functools.partial(check_digest, digest, graph)
    if config.budget_messages_per_minute or config.budget_recipients_per_day:
        checks["budgets"] = functools.partial(budget_use, config, store(config.storage))
    results = await api.run_health_checks(config, checks)
    results["delivery"] = delivery_modes(config.mail_delivery_mode).health()
    return results
