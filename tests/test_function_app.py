"""`function_app.py` as the Functions host indexes it: every trigger, its route, queue, schedule and auth level,
held against the OpenAPI document, the queues the app writes to and the settings it reads."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.config import ConfigError, load_settings
from shared.openapi import openapi_document

ROOT = Path(__file__).resolve().parent.parent
MINIMAL_SETTINGS = {"GRAPH_AUTH_MODE": "managed_identity", "MAIL_DEFAULT_SENDER": "notifications@contoso.test"}


@pytest.fixture
def triggers(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[str, Any]]]:
    """Each function's trigger binding, from the function JSON the host reads (`get_functions()` on a fresh
    copy of the app: the SDK lets each app object be indexed once)."""
    from shared.config import settings
    from shared.routing_file import notify_config

    for name, value in MINIMAL_SETTINGS.items():
        monkeypatch.setenv(name, value)
    settings.cache_clear()
    notify_config.cache_clear()
    spec = importlib.util.spec_from_file_location("function_app_indexed", ROOT / "function_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = {}
    for function in module.app.get_functions():
        bindings = json.loads(function.get_function_json())["bindings"]
        [trigger] = [b for b in bindings if b["type"].endswith("Trigger")]
        found[function.get_function_name()] = trigger
    yield found
    settings.cache_clear()
    notify_config.cache_clear()


def _by_type(triggers: dict[str, dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in triggers.items() if t["type"] == kind}


def _openapi_paths(route: str) -> list[str]:
    """A Functions route template's paths as OpenAPI writes them (an optional `{x?}` segment makes two)."""
    if route.endswith("?}"):
        return ["/" + route.rsplit("/", 1)[0], "/" + route.replace("?}", "}")]
    return ["/" + route]


def test_the_http_functions_are_the_route_table(triggers: dict[str, dict[str, Any]]) -> None:
    from shared.routes import FALLBACK, ROUTES

    assert {t["type"] for t in triggers.values()} == {"httpTrigger", "queueTrigger", "timerTrigger"}
    served = {
        name: (t["route"], tuple(t["methods"]), t["authLevel"].lower())
        for name, t in _by_type(triggers, "httpTrigger").items()
    }
    fallback = served.pop(FALLBACK.function)
    assert served == {r.function: (r.template, r.methods, r.auth_level) for r in ROUTES}
    assert fallback == (FALLBACK.template, FALLBACK.methods, "anonymous")  # 404/405 in the API's shape
    # only what reveals nothing secret is open without a function key
    assert {name for name, (_, _, auth) in served.items() if auth != "function"} == {"health", "openapi"}


def test_the_openapi_document_describes_exactly_the_http_functions_routes_methods_and_auth(
    triggers: dict[str, dict[str, Any]],
) -> None:
    document = openapi_document()
    host = json.loads((ROOT / "host.json").read_text())
    assert document["servers"] == [{"url": "/" + host["extensions"]["http"]["routePrefix"]}]
    from shared.routes import FALLBACK

    described: set[str] = set()
    for name, trigger in _by_type(triggers, "httpTrigger").items():
        if name == FALLBACK.function:  # the catch-all is no operation: it answers what no route serves
            continue
        assert trigger["authLevel"] in {"FUNCTION", "ANONYMOUS"}, name
        for path in _openapi_paths(trigger["route"]):
            operations = document["paths"][path]
            assert set(operations) == {m.lower() for m in trigger["methods"]}, (name, path)
            described.add(path)
            for operation in operations.values():
                assert operation["operationId"].startswith(name)
                if trigger["authLevel"] == "ANONYMOUS":
                    assert operation["security"] == [], (name, path)
                else:
                    schemes = {scheme for option in operation["security"] for scheme in option}
                    assert schemes and schemes <= set(document["components"]["securitySchemes"]), (name, path)
                path_params = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
                assert path_params == set(re.findall(r"\{(\w+)\}", path)), (name, path)
    assert set(document["paths"]) == described, "every documented path is served by a function"


def test_queue_triggers_listen_where_the_app_enqueues_through_the_storage_connection(
    triggers: dict[str, dict[str, Any]],
) -> None:
    from shared.store.storage import ALERTS_FLUSH, ALERTS_INBOX, APP_QUEUES, OUTBOX

    queues = {name: t["queueName"] for name, t in _by_type(triggers, "queueTrigger").items()}
    assert queues == {"mail_outbox": "mail-outbox", "alerts_inbox": "alerts-inbox", "alerts_flush": "alerts-flush"}
    # what submit_mail and the alert pipeline write to is what the triggers read
    written = {"mail_outbox": OUTBOX, "alerts_inbox": ALERTS_INBOX, "alerts_flush": ALERTS_FLUSH}
    assert queues == written
    assert set(queues.values()) <= set(APP_QUEUES)
    assert {t["connection"] for t in _by_type(triggers, "queueTrigger").values()} == {"AzureWebJobsStorage"}


def test_one_timer_ticks_every_minute_and_the_global_schedules_are_settings_the_app_reads_checks_and_ships(
    triggers: dict[str, dict[str, Any]],
) -> None:
    timers = {name: t["schedule"] for name, t in _by_type(triggers, "timerTrigger").items()}
    assert timers == {"digest_timer": "0 * * * * *", "bounce_check": "0 */5 * * * *"}  # fixed: no setting
    example = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    for setting in ("ALERT_DIGEST_SCHEDULE", "MAILBOX_DIGEST_SCHEDULE"):
        assert setting in example, setting  # shipped, so a deployment sees the default it runs on
        assert getattr(load_settings({**MINIMAL_SETTINGS, setting: "0 30 6 * * *"}), setting.lower()) == "0 30 6 * * *"
        with pytest.raises(ConfigError, match=setting):
            load_settings({**MINIMAL_SETTINGS, setting: "30 6 * * *"})  # five fields: not NCRONTAB
