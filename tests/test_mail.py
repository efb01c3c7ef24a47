"""The mail model on its own: both accepted forms, the checks, and the Graph body it renders."""

from __future__ import annotations

import pytest

from shared.config import load_settings
from shared.errors import AppError
from shared.mail import check_mail, graph_send_body, parse_mail, payload_hash

SETTINGS = load_settings(
    {
        "GRAPH_AUTH_MODE": "managed_identity",
        "MAIL_DEFAULT_SENDER": "notifications@contoso.test",
        "MAIL_ALLOWED_SENDERS": "support@contoso.test",
    }
)


def test_the_app_schema_renders_graphs_send_mail_body() -> None:
    mail = check_mail(
        parse_mail(
            {
                "to": ["alice@contoso.test", {"address": "bob@contoso.test", "name": "Bob"}],
                "bcc": "audit@contoso.test",
                "subject": "Disk full",
                "html": "<p>92%</p>",
                "importance": "high",
                "headers": {"x-alert-id": "42"},
                "attachments": [{"name": "df.txt", "contentType": "text/plain", "contentBase64": "ZGlzaw=="}],
                "saveToSentItems": False,
            }
        ),
        SETTINGS,
    )
    body = graph_send_body(mail)
    message = body["message"]
    assert body["saveToSentItems"] is False
    assert message["body"] == {"contentType": "html", "content": "<p>92%</p>"}
    assert message["toRecipients"] == [
        {"emailAddress": {"address": "alice@contoso.test"}},
        {"emailAddress": {"address": "bob@contoso.test", "name": "Bob"}},
    ]
    assert message["bccRecipients"] == [{"emailAddress": {"address": "audit@contoso.test"}}]
    assert message["importance"] == "high"
    assert message["internetMessageHeaders"] == [{"name": "x-alert-id", "value": "42"}]
    assert message["attachments"][0]["@odata.type"] == "#microsoft.graph.fileAttachment"
    assert message["attachments"][0]["contentBytes"] == "ZGlzaw=="
    assert mail.sender == "notifications@contoso.test"  # the default sender when none is named


def test_a_raw_graph_body_round_trips_to_the_same_graph_body() -> None:
    raw = {
        "Message": {
            "subject": "Hi",
            "body": {"contentType": "Text", "content": "hello"},
            "toRecipients": [{"emailAddress": {"address": "alice@contoso.test", "name": "Alice"}}],
            "from": {"emailAddress": {"address": "support@contoso.test"}},
        },
        "SaveToSentItems": True,
    }
    mail = check_mail(parse_mail(raw), SETTINGS)
    assert mail.sender == "support@contoso.test"
    body = graph_send_body(mail)
    assert body["message"]["body"] == {"contentType": "text", "content": "hello"}
    assert body["message"]["toRecipients"] == raw["Message"]["toRecipients"]


def test_every_problem_is_reported_with_its_field() -> None:
    with pytest.raises(AppError) as raised:
        check_mail(
            parse_mail(
                {
                    "to": ["bad", "alice@contoso.test"],
                    "cc": ["also bad"],
                    "subject": "a\r\nb",
                    "from": "ceo@contoso.test",
                }
            ),
            SETTINGS,
        )
    fields = [d.field for d in raised.value.details]
    assert fields == ["from", "to[0]", "cc[0]", "subject", "text"]
    assert raised.value.status == 400


def test_the_payload_hash_ignores_key_order() -> None:
    assert payload_hash({"a": 1, "b": [1, 2]}) == payload_hash({"b": [1, 2], "a": 1})
    assert payload_hash({"a": 1}) != payload_hash({"a": 2})
