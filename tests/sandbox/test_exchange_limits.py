"""Exchange Online's sending limits and non-delivery reports, on by default in the shipped seed."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import pytest

from sandbox.launcher import SandboxProcess
from sandbox.seed import DEFAULT_SEED, parse_seed

from ..helpers import SENDER, bearer

ALICE = "alice@contoso.test"


@pytest.fixture
def limited(sandbox: SandboxProcess, test_seed: dict[str, Any]) -> SandboxProcess:
    """The test sandbox with Exchange's default limits on (the test seed turns them off)."""
    sandbox.reset({**test_seed, "exchange": {}})
    return sandbox


def _send(sandbox: SandboxProcess, headers: dict[str, str], to: list[str], subject: str, **extra: Any) -> None:
    assert sandbox.control is not None
    message = {"subject": subject, "toRecipients": [{"emailAddress": {"address": a}} for a in to], **extra}
    answer = sandbox.control.post(f"/v1.0/users/{SENDER}/sendMail", headers=headers, json={"message": message})
    assert answer.status_code == 202, answer.text


def _advance(sandbox: SandboxProcess, seconds: float) -> None:
    assert sandbox.control is not None
    sandbox.control.put("/_sandbox/clock", json={"advanceSeconds": seconds}).raise_for_status()


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ndrs(sandbox: SandboxProcess) -> list[dict[str, Any]]:
    return [m for m in sandbox.mailbox(SENDER, "inbox") if m["subject"].startswith("Undeliverable: ")]


def test_the_shipped_seed_has_exchange_limits_on() -> None:
    limits = parse_seed(json.loads(DEFAULT_SEED.read_text())).exchange
    assert limits.enabled
    assert (limits.messages_per_minute, limits.recipients_per_day, limits.max_message_size_mb) == (30, 10_000, 35)


def test_31_mails_in_a_minute_are_accepted_and_the_31st_is_delivered_a_minute_later(limited: SandboxProcess) -> None:
    headers = bearer(limited)
    for n in range(31):
        _send(limited, headers, [ALICE], f"alert {n}")
    sent = limited.sent()
    assert len(sent) == 31
    first, last = _when(sent[0]["deliveredAt"]), _when(sent[30]["deliveredAt"])
    assert all(s["deliveredAt"] == s["submittedAt"] for s in sent[:30])
    assert (last - first).total_seconds() >= 60
    assert len(limited.mailbox(ALICE)) == 30  # the 31st is not there yet
    _advance(limited, 61)
    inbox = limited.mailbox(ALICE)
    assert len(inbox) == 31
    assert inbox[0]["subject"] == "alert 30" and _when(inbox[0]["receivedDateTime"]) == last


def test_recipients_beyond_10000_a_day_get_an_ndr_and_block_the_mailbox_for_24_hours(limited: SandboxProcess) -> None:
    headers = bearer(limited)
    for batch in range(20):
        _send(limited, headers, [f"user{batch}-{n}@fabrikam.test" for n in range(500)], f"batch {batch}")
    assert _ndrs(limited) == []
    _send(limited, headers, [ALICE], "one too many")

    over = limited.sent()[-1]
    assert over["ndr"]["code"] == "5.1.90" and over["deliveredAt"] is None
    [ndr] = _ndrs(limited)
    assert ndr["subject"] == "Undeliverable: one too many"
    assert "550 5.1.90" in ndr["body"]["content"]
    assert over["internetMessageId"] in ndr["body"]["content"].replace("&lt;", "<").replace("&gt;", ">")
    assert limited.mailbox(ALICE) == []

    _advance(limited, 3600)
    _send(limited, headers, [ALICE], "still blocked")
    assert limited.sent()[-1]["ndr"]["code"] == "5.1.90" and limited.mailbox(ALICE) == []

    _advance(limited, 86400)
    _send(limited, headers, [ALICE], "free again")
    assert [m["subject"] for m in limited.mailbox(ALICE)] == ["free again"]


def test_a_message_over_the_size_limit_gets_an_ndr_5_3_4(sandbox: SandboxProcess, test_seed: dict[str, Any]) -> None:
    seed = json.loads(json.dumps(test_seed))
    seed["exchange"] = {}
    next(u for u in seed["users"] if u["userPrincipalName"] == SENDER)["exchange"] = {"maxMessageSizeMB": 1}
    sandbox.reset(seed)
    attachment = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": "big.bin",
        "contentBytes": base64.b64encode(b"x" * 900_000).decode(),  # 1.2 MB encoded
    }
    _send(sandbox, bearer(sandbox), [ALICE], "too big", attachments=[attachment])
    [ndr] = _ndrs(sandbox)
    assert "550 5.3.4" in ndr["body"]["content"]
    assert sandbox.mailbox(ALICE) == []
    assert sandbox.sent()[-1]["ndr"]["code"] == "5.3.4"


def test_the_size_limit_measures_the_mime_message_with_base64_line_breaks_and_headers(
    sandbox: SandboxProcess, test_seed: dict[str, Any]
) -> None:
    """Exchange measures the encoded message: 765,000 bytes are 1,020,000 of base64 (under 1 MiB), and with
    its line breaks, the part and message headers the MIME message passes 1 MiB; a smaller file fits."""
    seed = json.loads(json.dumps(test_seed))
    seed["exchange"] = {}
    next(u for u in seed["users"] if u["userPrincipalName"] == SENDER)["exchange"] = {"maxMessageSizeMB": 1}
    sandbox.reset(seed)
    for subject, size in (("fits", 700_000), ("too big encoded", 765_000)):
        content = base64.b64encode(b"x" * size).decode()
        attachment = {"@odata.type": "#microsoft.graph.fileAttachment", "name": "big.bin", "contentBytes": content}
        _send(sandbox, bearer(sandbox), [ALICE], subject, attachments=[attachment])
    assert len(content) < 1024 * 1024
    assert [m["subject"] for m in sandbox.mailbox(ALICE)] == ["fits"]
    assert [s["ndr"] and s["ndr"]["code"] for s in sandbox.sent()] == [None, "5.3.4"]


def test_unknown_internal_recipients_get_an_ndr_5_1_10_and_the_others_the_mail(limited: SandboxProcess) -> None:
    _send(limited, bearer(limited), [ALICE, "nobody@contoso.test", "oncall@fabrikam.test"], "Disk full")
    assert [m["subject"] for m in limited.mailbox(ALICE)] == ["Disk full"]
    [ndr] = _ndrs(limited)
    assert "550 5.1.10" in ndr["body"]["content"] and "nobody@contoso.test" in ndr["body"]["content"]
    sent = limited.sent()[-1]
    assert sent["ndr"]["recipients"] == ["nobody@contoso.test"]
    assert sent["externalRecipients"] == ["oncall@fabrikam.test"]


def test_limits_switched_off_deliver_everything_at_once(sandbox: SandboxProcess) -> None:
    headers = bearer(sandbox)  # the test seed: "exchange": {"enabled": false}
    for n in range(31):
        _send(sandbox, headers, [ALICE, "nobody@contoso.test"], f"alert {n}")
    assert len(sandbox.mailbox(ALICE)) == 31
    assert _ndrs(sandbox) == []


def test_a_bad_exchange_seed_is_refused_naming_the_field(sandbox: SandboxProcess, test_seed: dict[str, Any]) -> None:
    assert sandbox.control is not None
    answer = sandbox.control.post("/_sandbox/reset", json={**test_seed, "exchange": {"messagesPerMinute": 0}})
    assert answer.status_code == 400
    assert "messagesPerMinute" in answer.json()["error"]["message"]
    users = [{**test_seed["users"][0], "exchange": {"maxMessageSizeMB": -1}}, *test_seed["users"][1:]]
    answer = sandbox.control.post("/_sandbox/reset", json={**test_seed, "users": users})
    assert answer.status_code == 400
    assert "users.0.exchange.maxMessageSizeMB" in answer.json()["error"]["message"]


def _headers_by_subject(sandbox: SandboxProcess, upn: str) -> dict[str, dict[str, str]]:
    return {
        m["subject"]: {h["name"].lower(): h["value"] for h in m.get("internetMessageHeaders") or []}
        | {"from": m["from"]["emailAddress"]["address"]}
        for m in sandbox.mailbox(upn)
    }


def test_an_ndr_is_shaped_as_exchange_online_s_and_the_header_firewall_stamps_where_mail_came_from(
    limited: SandboxProcess,
) -> None:
    forged = [{"name": "X-MS-Exchange-Organization-AuthAs", "value": "Anonymous"}]
    _send(limited, bearer(limited), [ALICE, "nobody@contoso.test"], "Disk full", internetMessageHeaders=forged)
    outside = {
        "subject": "From outside",
        "from": "x@fabrikam.test",
        "internetMessageHeaders": [{**forged[0], "value": "Internal"}],
    }
    limited.deliver(SENDER, [outside])
    mine = _headers_by_subject(limited, SENDER)
    ndr, seeded = mine["Undeliverable: Disk full"], mine["From outside"]
    assert ndr["from"] == "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.test"
    assert ndr["content-type"].startswith("multipart/report; report-type=delivery-status;")
    assert "x-ms-exchange-message-is-ndr" in ndr and ndr["x-ms-exchange-organization-authas"] == "Internal"
    assert ndr["auto-submitted"] == "auto-replied"
    original = limited.sent()[-1]["internetMessageId"]
    assert ndr["in-reply-to"] == original and ndr["references"] == original
    assert seeded["x-ms-exchange-organization-authas"] == "Anonymous"  # the sender's own was removed
    assert _headers_by_subject(limited, ALICE)["Disk full"]["x-ms-exchange-organization-authas"] == "Internal"
