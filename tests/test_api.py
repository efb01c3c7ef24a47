"""The HTTP API through function_app's own functions, on Azurite and the sandbox."""

from __future__ import annotations

import base64
import json
import logging
import re
from typing import Any

import pytest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from devhost.azurite import AzuriteProcess
from sandbox.launcher import SandboxProcess
from shared.logs import LIBRARY_LOGGERS

from .helpers import APP_SECRET, drain_queue, http, run, user_function

MAIL = {"to": ["alice@contoso.test"], "subject": "Disk almost full on db-1", "text": "92% used on /var"}


@pytest.fixture
def app(app_env: dict[str, str]) -> Any:
    import function_app

    return function_app


def _post(app: Any, body: Any = None, **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
    response = run(user_function(app.post_mail)(http("POST", "/api/mail", body, **kwargs)))
    text = response.get_body()
    return response.status_code, json.loads(text) if text else None, dict(response.headers)


def _queued(azurite: AzuriteProcess, name: str = "mail-outbox") -> list[dict[str, Any]]:
    queue = QueueClient.from_connection_string(
        azurite.connection_string, name, message_decode_policy=TextBase64DecodePolicy()
    )
    messages = [json.loads(m.content) for m in queue.peek_messages(max_messages=32)]
    queue.close()
    return messages


def test_a_valid_mail_is_accepted_queued_and_its_status_readable(app: Any, azurite: AzuriteProcess) -> None:
    status, body, headers = _post(app, MAIL)
    assert status == 202
    assert body["status"] == "queued"
    assert headers["Location"] == f"/api/mail/{body['id']}"
    [queued] = _queued(azurite)
    assert queued["id"] == body["id"]
    assert queued["from"] == "notifications@contoso.test"
    assert queued["to"] == [{"address": "alice@contoso.test"}]

    answer = run(user_function(app.get_mail)(http("GET", f"/api/mail/{body['id']}", route={"id": body["id"]})))
    assert answer.status_code == 200
    state = json.loads(answer.get_body())
    assert state["id"] == body["id"] and state["status"] == "queued" and state["attempts"] == 0
    assert state["updated"]


def test_a_repeated_id_or_idempotency_key_returns_the_first_answer_and_the_mail_is_sent_once(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    first = _post(app, {**MAIL, "id": "alert-4711"})
    again = _post(app, {**MAIL, "id": "alert-4711"})
    assert first[:2] == again[:2] == (202, {"id": "alert-4711", "status": "queued", "lane": "normal"})
    assert again[2]["Idempotent-Replay"] == "true"
    by_header = _post(app, MAIL, headers={"Idempotency-Key": "deploy-99"})
    by_header_again = _post(app, MAIL, headers={"Idempotency-Key": "deploy-99"})
    assert by_header[1] == by_header_again[1] == {"id": "deploy-99", "status": "queued", "lane": "normal"}
    assert {m["id"] for m in _queued(azurite)} == {"alert-4711", "deploy-99"}
    # a replay may leave a copy of the message; the sender sends each mail once
    run(drain_queue(azurite.connection_string, "mail-outbox", app.mail_outbox))
    assert len(sandbox.sent()) == 2


def test_an_id_reused_for_a_different_mail_is_409(app: Any, azurite: AzuriteProcess) -> None:
    assert _post(app, {**MAIL, "id": "once"})[0] == 202
    status, body, _ = _post(app, {**MAIL, "id": "once", "subject": "something else"})
    assert status == 409
    assert body["error"]["code"] == "conflict"
    assert len(_queued(azurite)) == 1


def test_ids_differing_only_in_letter_case_are_one_mail(app: Any, azurite: AzuriteProcess) -> None:
    first = _post(app, {**MAIL, "id": "Case-X"})
    again = _post(app, {**MAIL, "id": "case-x"})
    assert first[:2] == again[:2] == (202, {"id": "case-x", "status": "queued", "lane": "normal"})
    assert again[2]["Idempotent-Replay"] == "true"
    other = _post(app, {**MAIL, "subject": "something else"}, headers={"Idempotency-Key": "CASE-x"})
    assert other[0] == 409 and other[1]["error"]["code"] == "conflict"
    assert {m["id"] for m in _queued(azurite)} == {"case-x"}  # a replay may leave a spare copy
    answer = run(user_function(app.get_mail)(http("GET", "/api/mail/CASE-X", route={"id": "CASE-X"})))
    assert answer.status_code == 200 and json.loads(answer.get_body())["id"] == "case-x"


def test_a_reserved_header_is_refused_with_reserved_header(app: Any, azurite: AzuriteProcess) -> None:
    for name in ("x-ms-exchange-message-is-ndr", "X-MS-Exchange-Organization-AuthAs", "x-notifier-alert-group"):
        status, body, _ = _post(app, {**MAIL, "headers": {name: "x"}})
        assert status == 400 and body["error"]["code"] == "reserved_header", name
        assert name in body["error"]["message"]
    assert _post(app, {**MAIL, "headers": {"x-alert-id": "42"}})[0] == 202
    assert len(_queued(azurite)) == 1


def test_a_raw_graph_send_mail_body_is_accepted(app: Any, azurite: AzuriteProcess) -> None:
    status, _, _ = _post(
        app,
        {
            "message": {
                "subject": "From a Graph client",
                "body": {"contentType": "HTML", "content": "<p>hello</p>"},
                "toRecipients": [{"emailAddress": {"address": "bob@contoso.test", "name": "Bob"}}],
                "from": {"emailAddress": {"address": "support@contoso.test"}},
            },
            "saveToSentItems": False,
        },
    )
    assert status == 202
    [queued] = _queued(azurite)
    assert queued["html"] == "<p>hello</p>"
    assert queued["from"] == "support@contoso.test"
    assert queued["to"] == [{"address": "bob@contoso.test", "name": "Bob"}]
    assert queued["saveToSentItems"] is False


def test_a_mail_over_the_queue_limit_travels_through_a_blob(app: Any, azurite: AzuriteProcess) -> None:
    report = base64.b64encode(b"x" * 200_000).decode()
    status, body, _ = _post(app, {**MAIL, "attachments": [{"name": "report.txt", "contentBase64": report}]})
    assert status == 202
    [queued] = _queued(azurite)
    assert queued["id"] == body["id"] and set(queued) == {"id", "claimCheck"}
    assert re.fullmatch(rf"mail-payloads/{body['id']}-[0-9a-f]{{12}}\.json", queued["claimCheck"])


def test_unknown_and_malformed_mail_ids_are_404_and_400(app: Any) -> None:
    missing = run(user_function(app.get_mail)(http("GET", "/api/mail/nope", route={"id": "nope"})))
    assert missing.status_code == 404
    assert json.loads(missing.get_body())["error"]["code"] == "not_found"
    bad = run(user_function(app.get_mail)(http("GET", "/api/mail/x", route={"id": "../etc"})))
    assert bad.status_code == 400


RECIPIENT = ["alice@contoso.test"]
BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    # (what, kwargs for _post, status, field named in details or "")
    ("not json", {"raw": b"{nope"}, 400, "body"),
    ("empty body", {"raw": b""}, 400, "body"),
    ("invalid utf-8", {"raw": b"\xff\xfe\xfd"}, 400, "body"),
    ("deep nesting", {"raw": b"[" * 50_000}, 400, "body"),
    ("json array", {"body": [MAIL]}, 400, "body"),
    ("json string", {"body": "mail"}, 400, "body"),
    ("text/plain", {"body": MAIL, "headers": {"Content-Type": "text/plain"}}, 415, ""),
    ("form encoded", {"raw": b"to=a", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, ""),
    ("no content type", {"body": MAIL, "headers": {"Content-Type": ""}}, 415, ""),
    ("6 MB body", {"raw": b'{"to": "' + b"a" * 6_000_000 + b'"}'}, 413, ""),
    ("subject number", {"body": {**MAIL, "subject": 42}}, 400, "subject"),
    ("to number", {"body": {**MAIL, "to": 7}}, 400, "to"),
    ("to object without address", {"body": {**MAIL, "to": [{"name": "x"}]}}, 400, "to[0].address"),
    ("unknown field", {"body": {**MAIL, "priority": "urgent"}}, 400, "priority"),
    ("importance wrong", {"body": {**MAIL, "importance": "urgent"}}, 400, "importance"),
    ("saveToSentItems string", {"body": {**MAIL, "saveToSentItems": "no"}}, 400, "saveToSentItems"),
    ("text number", {"body": {**MAIL, "text": 1}}, 400, "text"),
    ("no body", {"body": {"to": RECIPIENT, "subject": "x"}}, 400, "text"),
    ("no recipients", {"body": {"subject": "x", "text": "y"}}, 400, "to"),
    ("empty to list", {"body": {**MAIL, "to": []}}, 400, "to"),
    ("bad address", {"body": {**MAIL, "to": ["not-an-address"]}}, 400, "to[0]"),
    ("address with space", {"body": {**MAIL, "to": ["al ice@contoso.test"]}}, 400, "to[0]"),
    ("address without tld", {"body": {**MAIL, "to": ["alice@localhost"]}}, 400, "to[0]"),
    ("address too long", {"body": {**MAIL, "to": ["a" * 250 + "@contoso.test"]}}, 400, "to[0]"),
    ("bad cc", {"body": {**MAIL, "cc": ["@contoso.test"]}}, 400, "cc[0]"),
    ("bad bcc", {"body": {**MAIL, "bcc": ["bob@"]}}, 400, "bcc[0]"),
    ("bad replyTo", {"body": {**MAIL, "replyTo": ["nobody"]}}, 400, "replyTo[0]"),
    ("501 recipients", {"body": {**MAIL, "to": [f"u{i}@fabrikam.test" for i in range(501)]}}, 400, "to"),
    (
        "501 across to/cc/bcc",
        {
            "body": {
                **MAIL,
                "to": [f"t{i}@f.test" for i in range(200)],
                "cc": [f"c{i}@f.test" for i in range(200)],
                "bcc": [f"b{i}@f.test" for i in range(101)],
            }
        },
        400,
        "to",
    ),
    ("CRLF in subject", {"body": {**MAIL, "subject": "hi\r\nBcc: evil@attacker.test"}}, 400, "subject"),
    ("LF in subject", {"body": {**MAIL, "subject": "hi\nthere"}}, 400, "subject"),
    ("NUL in subject", {"body": {**MAIL, "subject": "hi\x00"}}, 400, "subject"),
    ("CRLF in address", {"body": {**MAIL, "to": ["alice@contoso.test\r\nBcc: x@y.test"]}}, 400, "to[0]"),
    (
        "CRLF in display name",
        {"body": {**MAIL, "to": [{"address": "a@contoso.test", "name": "A\r\nB"}]}},
        400,
        "to[0].name",
    ),
    ("CRLF in header value", {"body": {**MAIL, "headers": {"x-alert": "a\r\nb: c"}}}, 400, "headers.x-alert"),
    ("header not x-", {"body": {**MAIL, "headers": {"Reply-By": "tomorrow"}}}, 400, "headers.Reply-By"),
    ("6 headers", {"body": {**MAIL, "headers": {f"x-h{i}": "v" for i in range(6)}}}, 400, "headers"),
    (
        "CRLF in attachment name",
        {"body": {**MAIL, "attachments": [{"name": "a\r\n.txt", "contentBase64": "aGk="}]}},
        400,
        "attachments[0].name",
    ),
    ("subject too long", {"body": {**MAIL, "subject": "s" * 256}}, 400, "subject"),
    ("body too long", {"body": {**MAIL, "text": "t" * 1_000_001}}, 400, "text"),
    (
        "bad base64",
        {"body": {**MAIL, "attachments": [{"name": "a.txt", "contentBase64": "%%%not base64"}]}},
        400,
        "attachments[0].contentBase64",
    ),
    (
        "base64 with bad padding",
        {"body": {**MAIL, "attachments": [{"name": "a", "contentBase64": "aGk"}]}},
        400,
        "attachments[0].contentBase64",
    ),
    (
        "attachment without name",
        {"body": {**MAIL, "attachments": [{"contentBase64": "aGk="}]}},
        400,
        "attachments[0].name",
    ),
    (
        "an inline attachment over 3 MB",
        {
            "body": {
                **MAIL,
                "attachments": [
                    {"name": "big.bin", "contentBase64": base64.b64encode(b"0" * (3 * 1024 * 1024 + 1)).decode()}
                ],
            }
        },
        400,
        "attachments[0].contentBase64",
    ),
    (
        "attachment with content and blob",
        {"body": {**MAIL, "attachments": [{"name": "a", "contentBase64": "aGk=", "blob": "mail-attachments/a"}]}},
        400,
        "attachments[0]",
    ),
    ("attachment blob null", {"body": {**MAIL, "attachments": [{"name": "a", "blob": None}]}}, 400, "attachments[0]"),
    (
        "attachment blob in another container",
        {"body": {**MAIL, "attachments": [{"name": "a", "blob": "mail-payloads/x.json"}]}},
        400,
        "attachments[0].blob",
    ),
    (
        "attachment blob climbing out",
        {"body": {**MAIL, "attachments": [{"name": "a", "blob": "mail-attachments/../mail-payloads/x"}]}},
        400,
        "attachments[0].blob",
    ),
    (
        "attachment blob that does not exist",
        {"body": {**MAIL, "attachments": [{"name": "a", "blob": "mail-attachments/never-uploaded"}]}},
        400,
        "attachments[0].blob",
    ),
    (
        "size on an inline attachment",
        {"body": {**MAIL, "attachments": [{"name": "a", "contentBase64": "aGk=", "size": 2}]}},
        400,
        "attachments[0]",
    ),
    (
        "sha256 not hex",
        {"body": {**MAIL, "attachments": [{"name": "a", "blob": "mail-attachments/a", "sha256": "x" * 64}]}},
        400,
        "attachments[0].sha256",
    ),
    ("disallowed sender", {"body": {**MAIL, "from": "ceo@contoso.test"}}, 400, "from"),
    ("sender not an address", {"body": {**MAIL, "from": "ceo"}}, 400, "from"),
    ("bad id", {"body": {**MAIL, "id": "../../etc/passwd"}}, 400, "id"),
    ("id too long", {"body": {**MAIL, "id": "a" * 65}}, 400, "id"),
    ("bad idempotency key", {"body": MAIL, "headers": {"Idempotency-Key": "has space"}}, 400, "Idempotency-Key"),
    ("id and key differ", {"body": {**MAIL, "id": "one"}, "headers": {"Idempotency-Key": "two"}}, 400, "id"),
    ("unknown template", {"body": {**MAIL, "template": "nope", "data": {}}}, 400, "template"),
    ("graph: message not object", {"body": {"message": "hi"}}, 400, "message"),
    ("graph: unknown message field", {"body": {"message": {"subject": "x", "flag": {}}}}, 400, "message.flag"),
    (
        "graph: bad recipient",
        {"body": {"message": {"subject": "x", "body": {"content": "y"}, "toRecipients": ["a@b.test"]}}},
        400,
        "message.toRecipients[0]",
    ),
    (
        "graph: body contentType",
        {
            "body": {
                "message": {
                    "subject": "x",
                    "body": {"contentType": "rtf"},
                    "toRecipients": [{"emailAddress": {"address": "a@b.test"}}],
                }
            }
        },
        400,
        "message.body.contentType",
    ),
    (
        "graph: item attachment",
        {
            "body": {
                "message": {
                    "subject": "x",
                    "body": {"content": "y"},
                    "toRecipients": [{"emailAddress": {"address": "a@b.test"}}],
                    "attachments": [{"@odata.type": "#microsoft.graph.itemAttachment"}],
                }
            }
        },
        400,
        "message.attachments[0].@odata.type",
    ),
    ("graph: unknown top-level", {"body": {"message": {}, "extra": 1}}, 400, "extra"),
]


def test_malformed_requests_get_clear_errors_naming_the_field_and_nothing_is_queued(
    app: Any, azurite: AzuriteProcess
) -> None:
    assert len(BAD_REQUESTS) >= 50
    for what, kwargs, status, field in BAD_REQUESTS:
        got, body, _ = _post(app, **kwargs)
        assert got == status, (what, got, body)
        error = body["error"]
        assert error["code"] and error["message"], what
        assert isinstance(error["details"], list), what
        if field:
            assert field in [d["field"] for d in error["details"]], (what, error["details"])
        assert "Traceback" not in error["message"]
    assert _queued(azurite) == []


def test_disallowed_recipient_domains_are_refused(
    app: Any, monkeypatch: pytest.MonkeyPatch, azurite: AzuriteProcess
) -> None:
    from shared.config import settings

    monkeypatch.setenv("MAIL_ALLOWED_RECIPIENT_DOMAINS", "contoso.test")
    settings.cache_clear()
    status, body, _ = _post(app, {**MAIL, "cc": ["someone@gmail.test"]})
    assert status == 400
    assert body["error"]["details"][0]["field"] == "cc[0]"
    assert _post(app, MAIL)[0] == 202
    assert len(_queued(azurite)) == 1


def test_health_checks_storage_key_vault_and_graph_without_revealing_secrets(
    app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in LIBRARY_LOGGERS:  # everything the SDKs can say, as with LIBRARY_LOG_LEVEL=DEBUG
        caplog.set_level(logging.DEBUG, logger=name)
    response = run(user_function(app.health)(http("GET", "/api/health")))
    text = response.get_body().decode()
    body = json.loads(text)
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    kinds = ("config", "storage", "keyVault", "graphToken", "digests", "delivery")
    assert body["checks"] == {k: {"ok": True} for k in kinds}
    assert APP_SECRET not in text and APP_SECRET not in caplog.text
    details = run(user_function(app.health_details)(http("GET", "/api/health/details")))
    assert set(json.loads(details.get_body())["checks"]) == {
        "config",
        "storage",
        "keyVault",
        "graphToken",
        "digest:support-new",
        "digest:support-waiting",
        "delivery",
    }
    assert APP_SECRET not in details.get_body().decode() and APP_SECRET not in caplog.text


def test_health_reports_a_broken_key_vault_as_degraded(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import settings

    monkeypatch.setenv("GRAPH_CREDENTIAL_SECRET_NAME", "no-such-secret")
    settings.cache_clear()
    response = run(user_function(app.health_details)(http("GET", "/api/health/details")))
    body = json.loads(response.get_body())
    assert response.status_code == 503
    assert body["checks"]["storage"]["ok"] is True
    assert body["checks"]["keyVault"]["ok"] is False
    assert "no-such-secret" in body["checks"]["keyVault"]["error"]
    anonymous = run(user_function(app.health)(http("GET", "/api/health")))
    assert anonymous.status_code == 503
    assert json.loads(anonymous.get_body())["checks"]["keyVault"] == {"ok": False}
    assert "no-such-secret" not in anonymous.get_body().decode()


def test_openapi_describes_the_api_and_the_published_schema_matches_the_model(app: Any) -> None:
    from pathlib import Path

    from shared.openapi import mail_schema

    response = run(user_function(app.openapi)(http("GET", "/api/openapi.json")))
    document = json.loads(response.get_body())
    assert document["openapi"].startswith("3.")
    assert {"/mail", "/mail/{id}", "/alerts", "/alerts/{source}", "/digests/{name}/run", "/health"} <= set(
        document["paths"]
    )
    assert "MailRequest" in document["components"]["schemas"]
    published = json.loads((Path(__file__).parent.parent / "schemas" / "mail.schema.json").read_text())
    assert published == mail_schema(), "regenerate schemas/mail.schema.json: make schemas"


def _call(app: Any, function: str, method: str, url: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
    response = run(user_function(getattr(app, function))(http(method, url, body, **kwargs)))
    text = response.get_body()
    return response.status_code, json.loads(text) if text else None


ALERT = {"name": "DiskFull", "severity": "critical", "labels": {"instance": "db-1"}}


@pytest.mark.parametrize(
    ("url", "params", "field"),
    [
        ("/api/alerts?dryrun=true", {"dryrun": "true"}, "dryrun"),  # wrong case: not our parameter
        ("/api/alerts?dryRun=yes", {"dryRun": "yes"}, "dryRun"),
        ("/api/alerts?dryRun", {}, "dryRun"),  # the host drops the empty value; the URL keeps it
        ("/api/alerts?dryRun=true&dryRun=true", {"dryRun": "true,true"}, "dryRun"),  # the host joins repeats
        ("/api/alerts?dryRun=1", {"dryRun": "1"}, "dryRun"),
        ("/api/alerts?verbose=true", {"verbose": "true"}, "verbose"),
    ],
)
def test_an_unknown_or_malformed_query_parameter_is_a_400_and_never_the_real_action(
    app: Any, azurite: AzuriteProcess, url: str, params: dict[str, str], field: str
) -> None:
    """Issue 12, item 1: a typo in a flag must never store an alert or send a mail."""
    status, body = _call(app, "post_alerts", "POST", url, ALERT, params=params)
    assert status == 400, body
    assert body["error"]["details"][0]["field"] == field
    assert "dryRun" in body["error"]["details"][0]["message"] or "true or false" in body["error"]["message"]
    assert _queued(azurite, "alerts-flush") == []


def test_query_flags_accept_true_and_false_in_any_case_and_the_function_key(app: Any, azurite: AzuriteProcess) -> None:
    status, body = _call(app, "post_alerts", "POST", "/api/alerts?dryRun=TRUE&code=k3y", ALERT)
    assert status == 200 and body["dryRun"] is True
    assert _queued(azurite, "alerts-flush") == []
    status, body = _call(app, "post_alerts", "POST", "/api/alerts?dryRun=False", ALERT)
    assert status == 202
    status, body = _call(app, "post_mail", "POST", "/api/mail?code=k3y", MAIL)
    assert status == 202


def test_mail_and_digest_endpoints_refuse_unknown_query_parameters(app: Any, azurite: AzuriteProcess) -> None:
    status, body = _call(app, "post_mail", "POST", "/api/mail?priority=high", MAIL)
    assert status == 400 and body["error"]["details"][0]["field"] == "priority"
    assert _queued(azurite) == []
    status, body = _call(
        app, "run_digest", "POST", "/api/digests/support-waiting/run?dryrun=true", route={"name": "support-waiting"}
    )
    assert status == 400 and body["error"]["details"][0] == {
        "field": "dryrun",
        "message": "unknown query parameter; known: dryRun",
    }
    assert _queued(azurite) == []


def test_ten_anonymous_health_calls_read_key_vault_once_call_graph_once_and_name_nothing(
    app: Any, sandbox: SandboxProcess, key_vault_reads: list[str]
) -> None:
    """Issue 11, item 14: health results are cached (15 s), and the anonymous answer names no digest."""
    reads = key_vault_reads
    since = sandbox.last_seq()

    async def ten_calls() -> list[Any]:
        import asyncio

        first = [await user_function(app.health)(http("GET", "/api/health"))]
        return first + list(
            await asyncio.gather(*(user_function(app.health)(http("GET", "/api/health")) for _ in range(9)))
        )

    responses = run(ten_calls())
    assert {r.status_code for r in responses} == {200}
    # one read by the check, one by the token chain's first use (its credential is then cached for an hour)
    assert reads == ["graph-client-secret", "graph-client-secret"]
    assert len([e for e in sandbox.requests(since) if "mailFolders" in e["path"]]) <= 4  # one check per digest
    text = responses[-1].get_body().decode()
    assert "support-new" not in text and "support-waiting" not in text and "support@" not in text
    assert "ms" not in json.loads(text)["checks"]["storage"]


def test_health_refuses_unknown_query_parameters(app: Any) -> None:
    status, body = _call(app, "health", "GET", "/api/health?details=true")
    assert status == 400 and body["error"]["details"][0]["field"] == "details"


def test_with_storage_down_every_endpoint_answers_503_with_retry_after_within_seconds(
    app: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11, item 12: no 500 `internal_error`, no 40 s wait: a 503 the caller can retry."""
    import time

    from devhost.azurite import free_port
    from shared.config import settings

    nobody = (free_port(), free_port(), free_port())  # nothing listens here: Storage is down
    monkeypatch.setenv("AzureWebJobsStorage", AzuriteProcess(tmp_path, nobody).connection_string)
    settings.cache_clear()
    calls = [
        ("post_mail", "POST", "/api/mail", MAIL, {}),
        ("get_mail", "GET", "/api/mail/m-1", None, {"route": {"id": "m-1"}}),
        ("post_alerts", "POST", "/api/alerts", ALERT, {}),
    ]
    for function, method, url, body, kwargs in calls:
        started = time.monotonic()
        response = run(user_function(getattr(app, function))(http(method, url, body, **kwargs)))
        took = time.monotonic() - started
        answer = json.loads(response.get_body())
        assert response.status_code == 503, (function, answer)
        assert answer["error"]["code"] == "service_unavailable"
        assert response.headers["Retry-After"] == "10"
        assert took < 10, (function, took)
    health = run(user_function(app.health_details)(http("GET", "/api/health/details")))
    assert health.status_code == 503 and json.loads(health.get_body())["checks"]["storage"]["ok"] is False


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "mails", 404, None),
        ("GET", "mail", 405, "POST"),
        ("DELETE", "mail/m-1", 405, "GET"),
        ("GET", "alerts/grafana", 405, "POST"),
        ("POST", "health", 405, "GET"),
        ("GET", "digests/support-unread", 404, None),
        ("PUT", "", 404, None),
    ],
)
def test_unknown_routes_and_wrong_methods_answer_json_errors_with_allow(
    app: Any, method: str, path: str, status: int, allow: str | None
) -> None:
    """Issue 12, item 4: the catch-all function answers what no route serves, in the API's error shape."""
    response = run(user_function(app.no_such_route)(http(method, f"/api/{path}", route={"path": path})))
    body = json.loads(response.get_body())
    assert response.status_code == status
    assert body["error"]["code"] == ("not_found" if status == 404 else "method_not_allowed")
    assert response.headers.get("Allow") == allow


def test_json_nested_deeper_than_64_levels_is_a_400_not_a_recursion_error(app: Any, azurite: AzuriteProcess) -> None:
    status, body, _ = _post(app, raw=b"[" * 30000)
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = _call(app, "post_alerts", "POST", "/api/alerts", raw=b'{"alerts": ' + b"[" * 100 + b"]" * 100 + b"}")
    assert status == 400 and body["error"]["details"] == [{"field": "body", "message": "nested too deep"}]
    assert _queued(azurite) == []


@pytest.mark.parametrize("where", ["id", "Idempotency-Key"])
def test_a_caller_cannot_take_an_id_of_the_apps_own_mails(app: Any, azurite: AzuriteProcess, where: str) -> None:
    """An `app:` id belongs to an alert or digest mail: a caller holding it first could silence that alert."""
    body = {**MAIL, "id": "App:alert-0123"} if where == "id" else MAIL
    headers = {"Idempotency-Key": "app:alert-0123"} if where != "id" else None
    status, answer, _ = _post(app, body, headers=headers)
    assert status == 400 and answer["error"]["details"][0]["field"] == where
    assert _queued(azurite) == []


# Microsoft's v1.0 sendMail examples (learn.microsoft.com/graph/api/user-sendmail), as Graph's page shows them;
# the mentions one is beta's (Graph's v1.0 sendMail ignores mentions)
LUNCH = {
    "message": {
        "subject": "Meet for lunch?",
        "body": {"contentType": "Text", "content": "The new cafeteria is open."},
        "toRecipients": [{"emailAddress": {"address": "frannis@contoso.com"}}],
        "ccRecipients": [{"emailAddress": {"address": "danas@contoso.com"}}],
    },
    "saveToSentItems": "false",
}
WITH_HEADERS = {
    "message": {
        "subject": "9/9/2018: concert",
        "body": {"contentType": "HTML", "content": "The group represents Nevada."},
        "toRecipients": [{"emailAddress": {"address": "AlexW@contoso.com"}}],
        "internetMessageHeaders": [
            {"name": "x-custom-header-group-name", "value": "Nevada"},
            {"name": "x-custom-header-group-id", "value": "NV001"},
        ],
    }
}
WITH_ATTACHMENT = {
    "message": {
        "subject": "Meet for lunch?",
        "body": {"contentType": "Text", "content": "The new cafeteria is open."},
        "toRecipients": [{"emailAddress": {"address": "meganb@contoso.com"}}],
        "attachments": [
            {
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": "attachment.txt",
                "contentType": "text/plain",
                "contentBytes": "SGVsbG8gV29ybGQh",
            }
        ],
    }
}
WITH_MENTIONS = {
    "message": {
        "subject": "Project kickoff",
        "toRecipients": [{"emailAddress": {"name": "Samantha Booth", "address": "samanthab@contoso.com"}}],
        "mentions": [{"mentioned": {"name": "Dana Swope", "address": "danas@contoso.com"}}],
    }
}


def _sent_from_graph_bodies(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch, *bodies: Any
) -> tuple[list[Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Post Graph bodies to the app, then send them: the answers, the mails queued, what the sandbox sent."""
    from shared.config import settings

    monkeypatch.setenv("MAIL_ALLOWED_RECIPIENT_DOMAINS", "*")  # Microsoft's examples mail contoso.com
    settings.cache_clear()
    answers = [_post(app, body) for body in bodies]
    assert [a[0] for a in answers] == [202] * len(bodies), answers
    queued = _queued(azurite)
    run(drain_queue(azurite.connection_string, "mail-outbox", app.mail_outbox))
    return [a[1] for a in answers], queued, sandbox.sent()


def test_microsofts_send_mail_examples_are_accepted_and_arrive_as_graph_would_send_them(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers, queued, sent = _sent_from_graph_bodies(
        app, azurite, sandbox, monkeypatch, LUNCH, WITH_HEADERS, WITH_ATTACHMENT, WITH_MENTIONS
    )
    assert len(sent) == 4, sent
    by_id = {m["id"]: m for m in queued}
    assert by_id[answers[0]["id"]]["saveToSentItems"] is False  # the string "false", as Graph reads it
    messages = {(m["subject"], bool(m["attachments"])): m for m in sent}
    lunch = messages[("Meet for lunch?", False)]
    assert lunch["body"] == {"contentType": "text", "content": "The new cafeteria is open."}
    assert lunch["externalRecipients"] == ["frannis@contoso.com", "danas@contoso.com"]
    assert [r["emailAddress"]["address"] for r in lunch["ccRecipients"]] == ["danas@contoso.com"]
    concert = messages[("9/9/2018: concert", False)]
    assert concert["body"] == {"contentType": "html", "content": "The group represents Nevada."}
    assert concert["toRecipients"][0]["emailAddress"]["address"] == "AlexW@contoso.com"
    assert {h["name"]: h["value"] for h in concert["internetMessageHeaders"]} == {
        "x-custom-header-group-name": "Nevada",
        "x-custom-header-group-id": "NV001",
    }
    [attached] = messages[("Meet for lunch?", True)]["attachments"]
    assert (attached["name"], attached["contentType"], attached["size"]) == ("attachment.txt", "text/plain", 12)
    kickoff = messages[("Project kickoff", False)]
    assert kickoff["toRecipients"] == [{"emailAddress": {"address": "samanthab@contoso.com", "name": "Samantha Booth"}}]
    assert "mentions" not in kickoff  # Graph's v1.0 sendMail ignores them; so does the app, and says so
    assert answers[3]["warnings"] == [
        {"code": "ignored_property", "message": "message.mentions: Graph's sendMail ignores it, and so does the app"}
    ]


def test_a_graph_body_in_any_letter_case_with_string_booleans_arrives_as_written(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    shouting = {
        "Message": {
            "Subject": "Any case",
            "Body": {"ContentType": "TEXT", "Content": "hello"},
            "ToRecipients": [{"EmailAddress": {"Address": "alice@contoso.test", "Name": "Alice"}}],
            "Importance": "High",
            "Attachments": [
                {
                    "@odata.type": "#Microsoft.Graph.FileAttachment",
                    "Name": "a.txt",
                    "ContentBytes": "aGk=",
                    "IsInline": "False",
                }
            ],
        },
        "SaveToSentItems": "FALSE",
    }
    _, [queued], [sent] = _sent_from_graph_bodies(app, azurite, sandbox, monkeypatch, shouting)
    assert queued["saveToSentItems"] is False
    assert sent["toRecipients"] == [{"emailAddress": {"address": "alice@contoso.test", "name": "Alice"}}]
    assert sent["importance"] == "high" and sent["body"] == {"contentType": "text", "content": "hello"}
    [attached] = sent["attachments"]
    assert (attached["name"], attached["isInline"], attached["size"]) == ("a.txt", False, 2)
    [arrived] = [m for m in sandbox.mailbox("alice@contoso.test") if m["subject"] == "Any case"]
    assert arrived["body"]["content"] == "hello"


GRAPH_TO = [{"emailAddress": {"address": "alice@contoso.test"}}]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"message": {"toRecipients": GRAPH_TO}, "saveToSentItems": "no"}, "saveToSentItems", "must be true or false"),
        (
            {"message": {"toRecipients": GRAPH_TO, "saveToSentItems": False}},
            "message.saveToSentItems",
            "belongs beside message, not in it",
        ),
        (
            {"message": {"toRecipients": [{"emailAddress": {"Address": 1}}]}},
            "message.toRecipients[0].emailAddress.Address",
            "Input should be a valid string",
        ),
        (
            {"message": {"toRecipients": [{"emailAddress": {"name": "A"}}]}},
            "message.toRecipients[0].emailAddress.address",
            "is required",
        ),
        (
            {"message": {"toRecipients": [{"EmailAddress": {"Address": "nope"}}]}},
            "message.toRecipients[0]",
            "not an email address",
        ),
        (
            {"message": {"ToRecipients": GRAPH_TO, "Flag": {"flagStatus": "flagged"}}},
            "message.Flag",
            "Graph's property is not supported by the app (see docs/api.md: the Graph form)",
        ),
        ({"message": {"toRecipients": GRAPH_TO, "Subjcet": "x"}}, "message.Subjcet", None),
        (
            {"message": {"toRecipients": GRAPH_TO, "Attachments": [{"Name": "a", "ContentBytes": "!"}]}},
            "message.Attachments[0].ContentBytes",
            "not valid base64",
        ),
        (
            {
                "message": {
                    "toRecipients": GRAPH_TO,
                    "body": {"content": "x"},
                    "internetMessageHeaders": [{"name": "Bad", "value": "v"}],
                }
            },
            "message.internetMessageHeaders[0]",
            None,
        ),
    ],
)
def test_graph_body_errors_name_the_field_as_the_caller_wrote_it(
    app: Any, azurite: AzuriteProcess, body: dict[str, Any], field: str, message: str | None
) -> None:
    status, answer, _ = _post(app, body)
    assert status == 400, answer
    [detail, *_] = answer["error"]["details"]
    assert detail["field"] == field, answer
    if message is not None:
        assert detail["message"] == message
    assert _queued(azurite) == []


def test_an_empty_or_missing_subject_is_accepted_with_a_warning(app: Any, azurite: AzuriteProcess) -> None:
    for body in ({**MAIL, "subject": ""}, {"to": MAIL["to"], "text": "no subject"}):
        status, answer, _ = _post(app, body)
        assert status == 202, answer
        assert answer["warnings"] == [
            {"code": "empty_subject", "message": "subject is empty: the mail goes without a subject"}
        ]
    status, answer, _ = _post(app, {"message": {"toRecipients": GRAPH_TO, "body": {"content": "x"}}})
    assert status == 202 and answer["warnings"][0]["code"] == "empty_subject"
    assert "warnings" not in _post(app, MAIL)[1]


def test_with_the_recipient_fence_unset_a_typo_in_a_domain_is_refused_not_mailed_outside(
    app: Any, monkeypatch: pytest.MonkeyPatch, azurite: AzuriteProcess
) -> None:
    from shared.config import settings

    monkeypatch.delenv("MAIL_ALLOWED_RECIPIENT_DOMAINS", raising=False)
    settings.cache_clear()
    status, body, _ = _post(app, {**MAIL, "to": ["alice@contoso.tset"]})
    assert status == 400
    assert body["error"]["details"][0] == {
        "field": "to[0]",
        "message": "recipient domain is not allowed (MAIL_ALLOWED_RECIPIENT_DOMAINS)",
    }
    assert _queued(azurite) == []
