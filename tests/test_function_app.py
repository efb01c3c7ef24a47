"""`function_app.py` as the Functions host indexes it: every trigger, its route, queue, schedule and auth level,
held against the OpenAPI document, the queues the app writes to and the settings it reads."""

from __future__ import annotations

import asyncio
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


# --- a first deployment: the settings are not there yet ---------------------------------------------------


def _index_app(name: str) -> tuple[Any, dict[str, Any]]:
    """A fresh copy of `function_app.py`, imported and indexed as the host does, with its functions by name."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "function_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, {f.get_function_name(): f for f in module.app.get_functions()}


@pytest.fixture
def not_configured(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The settings of a first `azd up`: keyvault mode before scripts/entra-app.sh has given GRAPH_CLIENT_ID."""
    from shared.config import settings
    from shared.routing_file import notify_config

    monkeypatch.setenv("GRAPH_CLIENT_ID", "")
    settings.cache_clear()
    notify_config.cache_clear()
    yield app_env
    settings.cache_clear()
    notify_config.cache_clear()


def _answer(response: Any) -> tuple[int, Any]:
    return response.status_code, json.loads(response.get_body() or b"null")


def test_without_graph_client_id_the_app_indexes_every_function_and_logs_the_setting_and_what_to_run(
    not_configured: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from shared.routes import FALLBACK, ROUTES

    with caplog.at_level("INFO", logger="notifier"):
        _, functions = _index_app("function_app_not_configured")

    expected = {r.function for r in ROUTES} | {FALLBACK.function}
    expected |= {"mail_outbox", "alerts_inbox", "alerts_flush", "digest_timer", "bounce_check"}
    assert set(functions) == expected
    [message] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "setting GRAPH_CLIENT_ID is required" in message
    assert "scripts/entra-app.sh" in message and "azd env set GRAPH_CLIENT_ID" in message


def test_without_graph_client_id_health_says_config_fails_and_every_other_endpoint_answers_not_configured(
    not_configured: dict[str, str],
) -> None:
    import azure.functions as func

    from shared.functions import shutdown
    from shared.routes import FALLBACK, ROUTES

    _, functions = _index_app("function_app_not_configured_http")
    mail = json.dumps({"to": ["alice@contoso.test"], "subject": "s", "text": "t"}).encode()

    async def call(function: str, method: str, url: str, **route: str) -> tuple[int, Any]:
        request = func.HttpRequest(
            method, url, headers={"Content-Type": "application/json"}, route_params=route, body=mail
        )
        return _answer(await functions[function].get_user_function()(request))

    async def main() -> dict[str, tuple[int, Any]]:
        answers = {
            "health": await call("health", "GET", "/api/health"),
            "health_details": await call("health_details", "GET", "/api/health/details"),
            "post_mail": await call("post_mail", "POST", "/api/mail"),
            "get_mail": await call("get_mail", "GET", "/api/mail/x1", id="x1"),
            "post_alerts": await call("post_alerts", "POST", "/api/alerts"),
            "run_digest": await call("run_digest", "POST", "/api/digests/support-new/run", name="support-new"),
            "run_alert_digest": await call(
                "run_alert_digest", "POST", "/api/alert-digests/alert-digest/run", receiver="alert-digest"
            ),
            "openapi": await call("openapi", "GET", "/api/openapi.json"),
            "no_such_route": await call("no_such_route", "GET", "/api/nothing", path="nothing"),
        }
        await shutdown()
        return answers

    answers = asyncio.run(main())

    assert set(answers) == {r.function for r in ROUTES} | {FALLBACK.function}
    status, health = answers.pop("health")
    assert (status, health) == (503, {"status": "degraded", "checks": {"config": {"ok": False}}})
    status, details = answers.pop("health_details")
    assert status == 503 and details["checks"]["config"] == {
        "ok": False,
        "error": "setting GRAPH_CLIENT_ID is required",
    }
    for name, (status, body) in answers.items():
        assert (status, body["error"]["code"]) == (503, "not_configured"), name
        assert "GRAPH_CLIENT_ID" not in body["error"]["message"], name  # anonymous answers name nothing internal


def test_without_graph_client_id_queue_messages_wait_on_their_queue_and_timers_do_nothing(
    not_configured: dict[str, str], azurite: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from azure.functions.queue import QueueMessage
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    from shared.functions import HOLD_SECONDS, shutdown

    _, functions = _index_app("function_app_not_configured_queues")
    mail = json.dumps({"id": "waits-for-config", "to": ["alice@contoso.test"], "subject": "s", "text": "t"})

    async def main() -> None:
        for function in ("mail_outbox", "alerts_inbox", "alerts_flush"):
            message = QueueMessage(id=f"m-{function}", body=mail.encode(), dequeue_count=5)  # the host's last try
            await functions[function].get_user_function()(message)  # returns: the host deletes this copy
        for function in ("digest_timer", "bounce_check"):
            await functions[function].get_user_function()(_Timer())
        await shutdown()

    with caplog.at_level("WARNING", logger="notifier"):
        asyncio.run(main())

    for queue_name in ("mail-outbox", "alerts-inbox", "alerts-flush"):
        queue = QueueClient.from_connection_string(
            azurite.connection_string, queue_name, message_decode_policy=TextBase64DecodePolicy()
        )
        assert queue.get_queue_properties().approximate_message_count == 1, queue_name  # put back, not lost
        assert list(queue.receive_messages(max_messages=32)) == [], queue_name  # invisible for HOLD_SECONDS
        poison = QueueClient.from_connection_string(azurite.connection_string, f"{queue_name}-poison")
        assert poison.get_queue_properties().approximate_message_count == 0, queue_name
        queue.close()
        poison.close()
    skipped = [r.getMessage() for r in caplog.records if "skipped: the app is not configured" in r.getMessage()]
    assert [m.split(" ")[0] for m in skipped] == ["digest_timer", "bounce_check"]
    assert HOLD_SECONDS >= 60


class _Timer:
    """What a timer trigger hands the function (azure.functions has no public constructor for it)."""

    past_due = False
