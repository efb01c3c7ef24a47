"""The mail model on its own: both accepted forms, the checks, and the Graph body it renders."""

from __future__ import annotations

import base64

import pytest

from shared.api import status_of
from shared.config import load_settings
from shared.errors import AppError
from shared.mail import (
    check_mail,
    encoded_message_bytes,
    graph_send_body,
    message_bytes,
    needs_draft,
    parse_mail,
    payload_hash,
)

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
    assert status_of(raised.value) == 400


def test_the_payload_hash_ignores_key_order() -> None:
    assert payload_hash({"a": 1, "b": [1, 2]}) == payload_hash({"b": [1, 2], "a": 1})
    assert payload_hash({"a": 1}) != payload_hash({"a": 2})


FENCED = load_settings(
    {
        "GRAPH_AUTH_MODE": "managed_identity",
        "MAIL_DEFAULT_SENDER": "notifications@contoso.test",
        "MAIL_ALLOWED_RECIPIENT_DOMAINS": "contoso.test",
    }
)


def _problems(body: dict[str, object], settings: object = SETTINGS) -> list[tuple[str, str]]:
    with pytest.raises(AppError) as raised:
        check_mail(parse_mail(body), settings)  # type: ignore[arg-type]
    return [(d.field, d.message) for d in raised.value.details]


def test_reply_to_is_fenced_by_the_recipient_domains_in_the_app_form_and_the_graph_form() -> None:
    """Issue 11, item 7: replies cannot be steered outside MAIL_ALLOWED_RECIPIENT_DOMAINS."""
    app_form = {"to": ["alice@contoso.test"], "replyTo": ["attacker@evil.test"], "subject": "s", "text": "t"}
    graph_form = {
        "message": {
            "subject": "s",
            "body": {"contentType": "text", "content": "t"},
            "toRecipients": [{"emailAddress": {"address": "alice@contoso.test"}}],
            "replyTo": [{"emailAddress": {"address": "attacker@evil.test"}}],
        }
    }
    assert _problems(app_form, FENCED) == [
        ("replyTo[0]", "recipient domain is not allowed (MAIL_ALLOWED_RECIPIENT_DOMAINS)")
    ]
    assert _problems(graph_form, FENCED) == [
        ("message.replyTo[0]", "recipient domain is not allowed (MAIL_ALLOWED_RECIPIENT_DOMAINS)")
    ]
    inside = check_mail(parse_mail({**app_form, "replyTo": ["bob@contoso.test"]}), FENCED)
    assert [m.address for m in inside.reply_to] == ["bob@contoso.test"]


@pytest.mark.parametrize("field", ["to", "cc", "bcc", "replyTo"])
def test_an_address_with_a_trailing_newline_is_not_an_address(field: str) -> None:
    """Issue 11, item 8: the address pattern must not accept a final `\\n` (`$` would)."""
    body: dict[str, object] = {"to": ["alice@contoso.test"], "subject": "s", "text": "t"}
    body[field] = ["bob@contoso.test\n"]
    assert (f"{field}[0]", "not an email address") in _problems(body)


def test_an_id_or_header_name_with_a_trailing_newline_is_refused() -> None:
    base = {"to": ["alice@contoso.test"], "subject": "s", "text": "t"}
    assert _problems({**base, "id": "incident-1\n"})[0][0] == "id"
    assert _problems({**base, "headers": {"x-ok\n": "v"}})[0][0] == "headers.x-ok\n"


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\u0080", "\u009b", "\u009f"])
def test_unicode_line_breaks_and_c1_controls_are_refused_in_every_header_like_field(char: str) -> None:
    """Issue 11, item 9: U+2028/U+2029 and the C1 controls count as line breaks, like CR and LF."""
    base = {"to": ["alice@contoso.test"], "subject": "s", "text": "t"}
    assert _problems({**base, "subject": f"Disk{char}Bcc: x@evil.test"})[0][0] == "subject"
    assert _problems({**base, "to": [{"address": "alice@contoso.test", "name": f"A{char}B"}]})[0][0] == "to[0].name"
    assert _problems({**base, "headers": {"x-alert": f"1{char}2"}})[0][0] == "headers.x-alert"
    attachment = {"name": f"a{char}.txt", "contentBase64": "ZGlzaw=="}
    assert _problems({**base, "attachments": [attachment]})[0][0] == "attachments[0].name"


def test_alert_subjects_fold_unicode_line_breaks_and_c1_controls_into_spaces() -> None:
    from shared.templating import one_line

    assert one_line("Disk\u2028full\u0085on\u2029web-3\r\n") == "Disk full on web-3"


def test_the_apps_own_mail_ids_fit_64_characters_however_long_the_names_in_them() -> None:
    from shared.mail import ID_PATTERN, app_mail_id

    assert app_mail_id("digest", "support-unread", "20261124T070000-abc123") == (
        "app:digest-support-unread-20261124t070000-abc123"  # ids are kept in lower case
    )
    long_name = app_mail_id("alertdigest", "platform-oncall-digest-for-the-night-shift", "20261124T070000", "abc123")
    assert ID_PATTERN.match(long_name) and long_name.startswith("app:alertdigest-")
    assert long_name != app_mail_id(
        "alertdigest", "platform-oncall-digest-for-the-night-shif", "20261124T070000", "abc123"
    )


# Attachments: inline or a blob, the message size limit, and which mails need the draft path

MIB = 1024 * 1024
BASE = {"to": ["alice@contoso.test"], "subject": "s", "text": "t"}
SMALL_LIMIT = load_settings(
    {"GRAPH_AUTH_MODE": "managed_identity", "MAIL_DEFAULT_SENDER": "n@contoso.test", "MAIL_MAX_MESSAGE_BYTES": str(MIB)}
)


def _inline(name: str, size: int) -> dict[str, object]:
    return {"name": name, "contentBase64": base64.b64encode(b"\0" * size).decode()}


def _blob(name: str, size: int, **more: object) -> dict[str, object]:
    return {"name": name, "blob": f"mail-attachments/m-1/{name}", "size": size, **more}


def test_an_attachment_is_inline_or_a_blob_never_both_nor_neither() -> None:
    for attachment, field in [
        ({"name": "a"}, "attachments[0]"),
        ({"name": "a", "contentBase64": "aGk=", "blob": "mail-attachments/a"}, "attachments[0]"),
        ({"name": "a", "blob": "mail-attachments/a", "contentBase64": None}, "attachments[0]"),
        ({"name": "a", "contentBase64": "aGk=", "sha256": "0" * 64}, "attachments[0]"),
        ({"name": "a", "blob": "digest-runs/a"}, "attachments[0].blob"),
        ({"name": "a", "blob": "mail-attachments/../digest-runs/a"}, "attachments[0].blob"),
        ({"name": "a", "blob": "mail-attachments/a..b"}, "attachments[0].blob"),
        ({"name": "a", "blob": "mail-attachments/a/"}, "attachments[0].blob"),
        ({"name": "a", "blob": "mail-attachments/a\n"}, "attachments[0].blob"),
    ]:
        with pytest.raises(AppError) as raised:
            parse_mail({**BASE, "attachments": [attachment]})
        assert [d.field for d in raised.value.details] == [field], attachment
        assert status_of(raised.value) == 400


def test_a_blob_attachment_counts_its_looked_up_size_and_an_unlooked_one_is_refused() -> None:
    mail = check_mail(parse_mail({**BASE, "attachments": [_blob("report.pdf", 20 * MIB)]}), SETTINGS)
    assert mail.attachments[0].byte_size() == 20 * MIB
    assert message_bytes(mail) == 20 * MIB + 1  # and the one-character text body
    unlooked = {"name": "r.pdf", "blob": "mail-attachments/m-1/r.pdf"}
    assert _problems({**BASE, "attachments": [unlooked]}) == [
        ("attachments[0].size", "unknown: the app reads a blob's size before the check")
    ]


def test_inline_attachments_are_at_most_3_mib_each_however_many() -> None:
    three = check_mail(parse_mail({**BASE, "attachments": [_inline("a", 3 * MIB), _inline("b", 3 * MIB)]}), SETTINGS)
    assert [a.byte_size() for a in three.attachments] == [3 * MIB, 3 * MIB]
    [(field, message)] = _problems({**BASE, "attachments": [_inline("big", 3 * MIB + 1)]})
    assert field == "attachments[0].contentBase64" and message.startswith(f"{3 * MIB + 1} bytes")


def test_the_size_limit_measures_the_encoded_message_in_every_form_and_the_413_names_both_sizes() -> None:
    """Exchange measures the encoded MIME message: 800,000 bytes of attachment (under 1 MiB) are about 1.1 MB in
    base64 lines, over a 1 MiB MAIL_MAX_MESSAGE_BYTES, in the app's schema (inline or blob) and Graph's."""
    content = base64.b64encode(b"\0" * 800_000).decode()
    graph_attachment = {"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.bin", "contentBytes": content}
    graph_form = {"message": {"subject": "s", "toRecipients": [{"emailAddress": {"address": "alice@contoso.test"}}],
                              "body": {"content": "t"}, "attachments": [graph_attachment]}}  # fmt: skip
    for body in (
        {**BASE, "attachments": [_inline("a.bin", 800_000)]},
        {**BASE, "attachments": [_blob("a.bin", 800_000)]},
        graph_form,
    ):
        mail = parse_mail(body)
        assert message_bytes(mail) == 800_001 < MIB
        with pytest.raises(AppError) as raised:
            check_mail(mail, SMALL_LIMIT)
        encoded = encoded_message_bytes(mail)
        assert status_of(raised.value) == 413 and raised.value.code == "payload_too_large"
        assert f"about {encoded} bytes as Exchange measures it" in raised.value.message
        assert f"from 800001 bytes of body and attachments; at most {MIB} are accepted" in raised.value.message
        assert "MAIL_MAX_MESSAGE_BYTES" in raised.value.message
    check_mail(parse_mail({**BASE, "attachments": [_blob("a.bin", 700_000)]}), SMALL_LIMIT)  # fits encoded


def test_the_encoded_size_estimate_is_never_below_what_the_sandboxs_exchange_measures() -> None:
    """What the app accepts within the limit, Exchange (the sandbox's MIME measure) does not bounce as too big;
    and the estimate stays close (headers and the body's encoding are all it adds)."""
    from sandbox.messages import message_size

    many = [f"user{n}@contoso.test" for n in range(400)]
    for body in (
        {**BASE, "attachments": [_inline("a.bin", 2 * MIB)]},
        {**BASE, "to": many, "subject": "Ünïcode " * 30, "html": "<p>Grüße</p>" * 20_000},
        {**BASE, "headers": {"x-run": "r" * 900}, "attachments": [_inline(f"f{n}.txt", 10_000) for n in range(40)]},
    ):
        mail = check_mail(parse_mail(body), SETTINGS)
        document = graph_send_body(mail)["message"]
        document["from"] = {"emailAddress": {"address": mail.sender}}
        for attachment in document.get("attachments", []):
            attachment["size"] = len(base64.b64decode(attachment["contentBytes"]))
        measured, estimate = message_size(document), encoded_message_bytes(mail)
        assert measured <= estimate <= measured * 1.4 + 64 * 1024, (measured, estimate)


def test_a_mail_needs_the_draft_path_for_a_blob_or_more_than_3_mib_of_attachments() -> None:
    def needs(*attachments: dict[str, object]) -> bool:
        return needs_draft(check_mail(parse_mail({**BASE, "attachments": list(attachments)}), SETTINGS))

    assert not needs()
    assert not needs(_inline("a", 3 * MIB - 64 * 1024))
    assert not needs(_inline("a", 2 * MIB), _inline("b", MIB - 64 * 1024))
    assert needs(_inline("a", 3 * MIB))  # within the inline limit, but its base64 alone fills a 4 MiB request
    assert needs(_inline("a", 2 * MIB), _inline("b", MIB + 1))  # together over what sendMail's request holds
    assert needs(_blob("tiny.txt", 3))  # a blob is uploaded, whatever its size


def test_the_send_mail_body_leaves_blob_attachments_to_the_upload_and_never_drops_them_unasked() -> None:
    mail = check_mail(parse_mail({**BASE, "attachments": [_inline("a.txt", 3), _blob("b.pdf", 9)]}), SETTINGS)
    with pytest.raises(ValueError, match="must be uploaded to a draft"):
        graph_send_body(mail)
    draft = graph_send_body(mail, leave_out_blobs=True)["message"]
    assert [a["name"] for a in draft["attachments"]] == ["a.txt"]


def test_the_fingerprint_counts_a_hashed_blob_by_its_content_not_its_random_name() -> None:
    digest = "ab" * 32
    first = {**BASE, "attachments": [_blob("r.pdf", 9, sha256=digest)]}
    again = {**BASE, "attachments": [{**_blob("r.pdf", 9, sha256=digest), "blob": "mail-attachments/m-1/other"}]}
    assert payload_hash(first) == payload_hash(again)
    assert payload_hash(first) != payload_hash({**BASE, "attachments": [_blob("r.pdf", 9, sha256="cd" * 32)]})
    assert payload_hash(first) != payload_hash({**BASE, "attachments": [_blob("renamed.pdf", 9, sha256=digest)]})
    # a producer's blob without a hash is known by its name; its size is the app's reading, not the mail's
    named = {**BASE, "attachments": [_blob("r.pdf", 9)]}
    assert payload_hash(named) == payload_hash({**BASE, "attachments": [_blob("r.pdf", 10)]})
    assert payload_hash(named) != payload_hash(
        {**BASE, "attachments": [{**_blob("r.pdf", 9), "blob": "mail-attachments/m-1/other"}]}
    )


def test_the_alert_lanes_are_only_for_priority_senders_and_a_pool_replaces_the_sender() -> None:
    settings = load_settings(
        {
            "GRAPH_AUTH_MODE": "managed_identity",
            "MAIL_DEFAULT_SENDER": "notifications@contoso.test",
            "MAIL_ALLOWED_SENDERS": "alerts@contoso.test,a@contoso.test,b@contoso.test",
            "MAIL_PRIORITY_SENDERS": "alerts@contoso.test",
            "MAIL_SENDER_POOLS": "bulk: a@contoso.test, b@contoso.test",
        }
    )
    mail = {"to": ["alice@contoso.test"], "subject": "s", "text": "t"}
    with pytest.raises(AppError) as refused:
        check_mail(parse_mail({**mail, "priority": "critical"}), settings)
    assert refused.value.details[0].field == "priority" and status_of(refused.value) == 400
    assert check_mail(parse_mail({**mail, "priority": "critical", "from": "alerts@contoso.test"}), settings)
    assert check_mail(parse_mail({**mail, "priority": "bulk"}), settings).priority == "bulk"
    pooled = check_mail(parse_mail({**mail, "senderPool": "bulk"}), settings)
    assert pooled.sender is None and pooled.sender_pool == "bulk"
    for bad in ({"senderPool": "nope"}, {"senderPool": "bulk", "from": "a@contoso.test"}):
        with pytest.raises(AppError) as error:
            check_mail(parse_mail({**mail, **bad}), settings)
        assert error.value.details[0].field == "senderPool"


def test_a_body_whose_graph_request_can_never_fit_4_mb_is_refused_with_413_naming_the_field() -> None:
    """700,000 CJK characters are within MAX_BODY_CHARS, but JSON escapes each to six bytes: 4.2 MB of request
    that no attachment left out could shrink. The same count of ASCII is fine."""
    with pytest.raises(AppError) as raised:
        check_mail(parse_mail({"to": ["alice@contoso.test"], "subject": "s", "text": "\u6f22" * 700_000}), SETTINGS)
    assert status_of(raised.value) == 413
    assert [d.field for d in raised.value.details] == ["text"]
    ascii_mail = check_mail(parse_mail({"to": ["alice@contoso.test"], "subject": "s", "text": "a" * 700_000}), SETTINGS)
    assert not needs_draft(ascii_mail)
