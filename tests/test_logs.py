"""What reaches the log (and so Application Insights, through the worker): the app's own records, not the
SDKs' request logging; never a function key from a URL (issue 12, item 8)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from devhost.azurite import AzuriteProcess, free_port
from sandbox.launcher import SandboxProcess
from shared.logs import LIBRARY_LOGGERS

from .helpers import drain_queue, http, run, user_function

MAIL = {"to": ["alice@contoso.test"], "subject": "Backup done", "text": "All 12 databases."}


@pytest.fixture
def app(app_env: dict[str, str]) -> Any:
    import function_app

    function_app.handlers.start_up()  # as at import, with this test's settings
    return function_app


def test_library_loggers_are_at_warning_unless_library_log_level_says_otherwise(
    app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from shared.config import settings

    assert {logging.getLogger(name).getEffectiveLevel() for name in LIBRARY_LOGGERS} == {logging.WARNING}
    monkeypatch.setenv("LIBRARY_LOG_LEVEL", "info")
    settings.cache_clear()
    app.handlers.start_up()
    assert {logging.getLogger(name).getEffectiveLevel() for name in LIBRARY_LOGGERS} == {logging.INFO}
    monkeypatch.setenv("LIBRARY_LOG_LEVEL", "chatty")
    settings.cache_clear()
    with caplog.at_level(logging.ERROR, logger="notifier"):
        app.handlers.start_up()  # the app indexes and waits, not configured, naming the setting
    assert any("LIBRARY_LOG_LEVEL" in r.getMessage() and "not configured" in r.getMessage() for r in caplog.records)
    monkeypatch.delenv("LIBRARY_LOG_LEVEL")
    settings.cache_clear()
    app.handlers.start_up()


def test_a_delivered_mail_logs_the_apps_records_and_none_of_the_sdks_request_logging(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # what the worker forwards

    async def scenario() -> None:
        await user_function(app.post_mail)(http("POST", "/api/mail", MAIL))
        await drain_queue(azurite.connection_string, "mail-outbox", app.mail_outbox)

    run(scenario())
    names = {record.name for record in caplog.records}
    assert "notifier.audit" in names  # the mail's audit record is there
    assert not {n for n in names if n.split(".")[0] in {"azure", "httpx", "httpcore", "kiota_http", "msal"}}
    assert sandbox.sent()


def test_an_error_log_names_the_path_never_the_query_with_the_function_key(
    app: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from shared.config import settings

    nobody = (free_port(), free_port(), free_port())  # Storage down: the API logs the failure
    monkeypatch.setenv("AzureWebJobsStorage", AzuriteProcess(tmp_path, nobody).connection_string)
    settings.cache_clear()
    caplog.set_level(logging.INFO)
    request = http("GET", "/api/mail/m-1?code=the-function-key-value", route={"id": "m-1"})
    response = run(user_function(app.get_mail)(request))
    assert response.status_code == 503, json.loads(response.get_body())
    assert "/api/mail/m-1" in caplog.text
    assert "the-function-key-value" not in caplog.text


def test_the_start_up_log_says_which_recipient_fence_is_in_force(
    app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from shared.config import settings

    caplog.set_level(logging.INFO)
    for given, said in (
        (None, "recipient fence: recipients only in contoso.test"),
        ("*", "recipient fence: MAIL_ALLOWED_RECIPIENT_DOMAINS=*: any recipient domain"),
    ):
        if given is None:
            monkeypatch.delenv("MAIL_ALLOWED_RECIPIENT_DOMAINS", raising=False)
        else:
            monkeypatch.setenv("MAIL_ALLOWED_RECIPIENT_DOMAINS", given)
        settings.cache_clear()
        caplog.clear()
        app.handlers.start_up()
        assert said in [r.getMessage() for r in caplog.records]
    monkeypatch.delenv("MAIL_ALLOWED_RECIPIENT_DOMAINS")
    settings.cache_clear()
