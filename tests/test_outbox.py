"""Delivery semantics of the mail-outbox trigger, on Azurite and the sandbox, with the host's queue rules."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.storage.blob import BlobClient, BlobServiceClient
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from devhost.azurite import AzuriteProcess
from devhost.queues import QueueSettings, QueueTrigger
from sandbox.launcher import SandboxProcess
from shared.logs import LIBRARY_LOGGERS

from .helpers import APP_ID, APP_SECRET, SENDER, audit_rows, http, mail_sends, run, user_function

MAIL = {"to": ["alice@contoso.test"], "subject": "CPU at 97% on web-3", "text": "Since 10:02 UTC."}


@pytest.fixture
def app(app_env: dict[str, str]) -> Any:
    import function_app

    return function_app


def _trigger(app: Any, azurite: AzuriteProcess) -> QueueTrigger:
    return QueueTrigger(
        azurite.connection_string,
        "mail-outbox",
        user_function(app.mail_outbox),
        QueueSettings(max_polling_interval=0.2),
    )


async def _post(app: Any, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = await user_function(app.post_mail)(http("POST", "/api/mail", body, **kwargs))
    assert response.status_code == 202, response.get_body()
    answer: dict[str, Any] = json.loads(response.get_body())
    return answer


async def _status(app: Any, mail_id: str) -> dict[str, Any]:
    response = await user_function(app.get_mail)(http("GET", f"/api/mail/{mail_id}", route={"id": mail_id}))
    answer: dict[str, Any] = json.loads(response.get_body())
    return answer


def _queue(azurite: AzuriteProcess, name: str = "mail-outbox") -> QueueClient:
    return QueueClient.from_connection_string(azurite.connection_string, name)


def _sends(sandbox: SandboxProcess, since: int) -> list[dict[str, Any]]:
    return mail_sends(sandbox.requests(since))


def test_an_accepted_mail_is_sent_once_and_a_redelivered_message_makes_no_graph_call(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> dict[str, Any]:
        accepted = await _post(app, {**MAIL, "id": "incident-1"})
        trigger = _trigger(app, azurite)
        await trigger.drain()
        first = await _status(app, "incident-1")
        since = sandbox.last_seq()
        # at-least-once delivery: the same message arrives again
        queue = QueueClient.from_connection_string(
            azurite.connection_string, "mail-outbox", message_encode_policy=TextBase64EncodePolicy()
        )
        queue.send_message(json.dumps({**MAIL, "id": "incident-1"}))
        await trigger.drain()
        again = await _post(app, {**MAIL, "id": "incident-1"})
        await trigger.drain()
        records = audit_rows(azurite.connection_string)
        audit = [
            (r["operation"], r["outcome"], r["mailbox"], r["recipientCount"])
            for r in records
            if r["correlationId"] == "incident-1"
        ]
        assert all("alice" not in r["recipients"] for r in records)  # recipients are hashed by default
        return {
            "accepted": accepted,
            "first": first,
            "again": again,
            "since": since,
            "invocations": trigger.invocations,
            "audit": audit,
        }

    result = run(scenario())
    assert result["first"]["status"] == "sent" and result["first"]["attempts"] == 1
    assert result["audit"] == [("sendDraft", "sent", SENDER, 1)]  # one audit row, for the one mail sent
    assert result["again"] == result["accepted"]
    assert _sends(sandbox, result["since"]) == []
    assert [m["subject"] for m in sandbox.mailbox("alice@contoso.test")] == ["CPU at 97% on web-3"]
    assert len(sandbox.mailbox(SENDER, "sentitems")) == 1
    assert all(i.ok for i in result["invocations"])


def test_a_mail_from_an_outside_producer_is_delivered_and_gets_a_status(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    producer = QueueClient.from_connection_string(
        azurite.connection_string, "mail-outbox", message_encode_policy=TextBase64EncodePolicy()
    )
    producer.send_message(
        json.dumps(
            {
                "id": "from-cron",
                "to": ["bob@contoso.test"],
                "subject": "Nightly backup ok",
                "html": "<p>All 12 databases backed up.</p>",
            }
        )
    )

    async def scenario() -> dict[str, Any]:
        await _trigger(app, azurite).drain()
        return await _status(app, "from-cron")

    assert run(scenario())["status"] == "sent"
    [received] = sandbox.mailbox("bob@contoso.test")
    assert received["body"]["contentType"] == "html"


def test_throttling_beyond_the_sdk_retries_reenqueues_with_the_retry_after_delay_without_spending_a_dequeue(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> dict[str, Any]:
        await _post(app, {**MAIL, "id": "throttled-1"})
        sandbox.set_faults(errorRate=1, errorStatuses=[503])  # every Graph call: 503, Retry-After: 1
        trigger = _trigger(app, azurite)
        await trigger.poll_once()
        while_throttled = await _status(app, "throttled-1")
        properties = _queue(azurite).get_queue_properties()
        visible_now = list(_queue(azurite).peek_messages())
        sandbox.set_faults()
        await asyncio.sleep(1.5)
        await trigger.drain()
        return {
            "throttled": while_throttled,
            "waiting": properties.approximate_message_count,
            "visible_now": visible_now,
            "final": await _status(app, "throttled-1"),
            "dequeues": [i.dequeue_count for i in trigger.invocations],
        }

    result = run(scenario())
    throttled = result["throttled"]
    assert throttled["status"] == "queued"
    assert throttled["attempts"] == 1
    assert throttled["error"]["code"] == "ServiceUnavailable"
    assert result["waiting"] == 1 and result["visible_now"] == []  # re-enqueued, invisible for Retry-After
    assert result["final"]["status"] == "sent" and result["final"]["attempts"] == 2
    assert result["dequeues"] == [1, 1]  # the retry came as a new message: no dequeue was spent


def test_a_long_retry_after_is_handed_back_to_the_queue_instead_of_sleeping(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> dict[str, Any]:
        # the draft path costs two requests a mail (create, send): the first mail uses up the window
        sandbox.set_faults(throttle={"requestsPerWindow": 2, "windowSeconds": 60})
        await _post(app, {**MAIL, "id": "uses-the-window"})
        await _post(app, {**MAIL, "id": "over-the-window"})
        trigger = _trigger(app, azurite)
        trigger.settings.batch_size = 1
        since = sandbox.last_seq()
        await trigger.poll_once()
        await trigger.poll_once()
        return {
            "since": since,
            "first": await _status(app, "uses-the-window"),
            "second": await _status(app, "over-the-window"),
            "seconds": [i.seconds for i in trigger.invocations],
            "waiting": _queue(azurite).get_queue_properties().approximate_message_count,
        }

    result = run(scenario())
    assert result["first"]["status"] == "sent"
    assert result["second"]["status"] == "queued"
    assert result["second"]["error"]["code"] == "ApplicationThrottled"
    assert [e["status"] for e in sandbox.requests(result["since"])] == [201, 202, 429]  # no in-process retry
    assert max(result["seconds"]) < 5
    assert result["waiting"] == 1


def test_permanent_graph_errors_fail_the_mail_at_once_with_graphs_code(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> dict[str, Any]:
        since = sandbox.last_seq()
        # alice@ is an allowed sender for the app, but outside the Graph app's mailbox scope: 403
        await _post(app, {**MAIL, "id": "not-in-scope", "from": "alice@contoso.test"})
        await _trigger(app, azurite).drain()
        return {"since": since, "status": await _status(app, "not-in-scope")}

    result = run(scenario())
    assert result["status"]["status"] == "failed"
    assert result["status"]["attempts"] == 1
    assert result["status"]["error"]["code"] == "ErrorAccessDenied"
    assert [e["status"] for e in _sends(sandbox, result["since"])] == [403]
    assert _queue(azurite).get_queue_properties().approximate_message_count == 0


def test_a_crashing_delivery_is_redelivered_then_poisoned_after_5_dequeues_with_the_reason_recorded(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)

    async def scenario() -> dict[str, Any]:
        accepted = await _post(app, MAIL)
        # the Graph credential in Key Vault is wrong (a botched rotation): Entra refuses it, the app reads the
        # vault once more, gets the same, and every delivery attempt crashes until someone fixes the vault
        sandbox.control.post("/_sandbox/keyvault/secrets/graph-client-secret", json={"value": "not-the-secret"})
        trigger = _trigger(app, azurite)
        await trigger.drain(idle_polls=2)
        return {"id": accepted["id"], "status": await _status(app, accepted["id"]), "invocations": trigger.invocations}

    result = run(scenario())
    assert [(i.dequeue_count, i.ok) for i in result["invocations"]] == [(n, False) for n in range(1, 6)]
    assert result["status"]["status"] == "failed"
    assert "moved to mail-outbox-poison after 5 attempts" in result["status"]["error"]["message"]
    [poisoned] = _queue(azurite, "mail-outbox-poison").peek_messages()
    assert result["id"] in base64.b64decode(poisoned.content).decode()
    assert sandbox.sent() == []


def test_an_invalid_queue_message_is_poisoned_at_once_with_its_reason(app: Any, azurite: AzuriteProcess) -> None:
    producer = QueueClient.from_connection_string(
        azurite.connection_string, "mail-outbox", message_encode_policy=TextBase64EncodePolicy()
    )
    producer.send_message(json.dumps({"id": "broken-1", "to": ["not an address"], "subject": "x", "text": "y"}))
    producer.send_message("this is not json")

    async def scenario() -> dict[str, Any]:
        trigger = _trigger(app, azurite)
        await trigger.drain()
        return {"status": await _status(app, "broken-1"), "invocations": trigger.invocations}

    result = run(scenario())
    assert result["status"]["status"] == "failed"
    assert result["status"]["error"]["code"] == "invalid_request"
    assert "to[0]" in result["status"]["error"]["message"]
    assert all(i.ok for i in result["invocations"])  # handled, not crashed: no redelivery
    assert len(_queue(azurite, "mail-outbox-poison").peek_messages(max_messages=10)) == 2


def test_a_queued_mail_over_the_encoded_size_limit_is_poisoned_with_both_sizes_and_never_sent(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer's queue message is measured as Exchange measures the message: 800,000 bytes of attachment
    are over a 1 MiB MAIL_MAX_MESSAGE_BYTES once in base64 lines."""
    from shared.config import settings
    from shared.store import store

    monkeypatch.setenv("MAIL_MAX_MESSAGE_BYTES", str(1024 * 1024))
    settings.cache_clear()
    attachment = {"name": "a.bin", "contentBase64": base64.b64encode(b"a" * 800_000).decode()}

    async def scenario() -> dict[str, Any]:  # over 64 KB: the message is a claim check of a mail-payloads blob
        await store(settings().storage).outbox.enqueue(
            "encoded-big", {**MAIL, "id": "encoded-big", "attachments": [attachment]}
        )
        await _trigger(app, azurite).drain()
        return await _status(app, "encoded-big")

    status = run(scenario())
    assert status["status"] == "failed" and status["error"]["code"] == "payload_too_large"
    assert "as Exchange measures it" in status["error"]["message"] and "800016 bytes" in status["error"]["message"]
    assert sandbox.sent() == []


def test_at_most_4_graph_requests_per_mailbox_are_in_flight_per_process(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> int:
        for n in range(12):
            await _post(app, {**MAIL, "id": f"burst-{n}"})
        sandbox.set_faults(latencyMs=300, throttle={"concurrentPerMailbox": 4})
        since = sandbox.last_seq()
        await _trigger(app, azurite).drain()
        return since

    since = run(scenario())
    statuses = [e["status"] for e in _sends(sandbox, since)]
    assert statuses == [202] * 12  # 12 sent at once by the batch, never a 429 from the mailbox limit
    assert len(sandbox.mailbox("alice@contoso.test")) == 12


def test_a_rotated_graph_secret_is_picked_up_without_a_restart(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, test_seed: dict[str, Any]
) -> None:
    sandbox.reset({**test_seed, "tokenLifetimeSeconds": 2})  # every send needs a fresh token

    async def scenario() -> dict[str, Any]:
        trigger = _trigger(app, azurite)
        await _post(app, {**MAIL, "id": "before-rotation"})
        await trigger.drain()
        assert sandbox.control is not None
        sandbox.control.post(f"/_sandbox/apps/{APP_ID}/secrets", json={"secret": "rotated-secret"}).raise_for_status()
        sandbox.control.post(
            "/_sandbox/keyvault/secrets/graph-client-secret", json={"value": "rotated-secret"}
        ).raise_for_status()
        await asyncio.sleep(2.1)
        await _post(app, {**MAIL, "id": "after-rotation"})
        await trigger.drain()
        return {"before": await _status(app, "before-rotation"), "after": await _status(app, "after-rotation")}

    result = run(scenario())
    assert result["before"]["status"] == "sent"
    assert result["after"]["status"] == "sent", result["after"]
    assert len(sandbox.mailbox("alice@contoso.test")) == 2


def test_secrets_and_tokens_never_reach_the_logs(
    app: Any,
    azurite: AzuriteProcess,
    sandbox: SandboxProcess,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in LIBRARY_LOGGERS:  # everything the SDKs can say, as with LIBRARY_LOG_LEVEL=DEBUG
        caplog.set_level(logging.DEBUG, logger=name)

    async def scenario() -> None:
        await _post(app, {**MAIL, "id": "log-scan"})
        await _trigger(app, azurite).drain()
        await user_function(app.health)(http("GET", "/api/health"))

    run(scenario())
    captured = capfd.readouterr()
    everything = caplog.text + captured.out + captured.err
    assert "log-scan" in everything or caplog.records  # the flow did log
    assert APP_SECRET not in everything
    assert "eyJ" not in everything  # no JWT (access token) in any log line


def _send_raw(azurite: AzuriteProcess, text: str) -> None:
    producer = QueueClient.from_connection_string(
        azurite.connection_string, "mail-outbox", message_encode_policy=TextBase64EncodePolicy()
    )
    producer.send_message(text)
    producer.close()


def _poisoned(azurite: AzuriteProcess) -> list[str]:
    return [base64.b64decode(m.content).decode() for m in _queue(azurite, "mail-outbox-poison").peek_messages(32)]


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({**MAIL, "id": "q2/bad#id"}),  # an id Table storage cannot hold as a key
        "[" * 30000,  # JSON nested deeper than the parser goes
    ],
    ids=["id-table-storage-cannot-hold", "json-too-deep"],
)
def test_a_message_that_can_never_be_processed_is_poisoned_once_at_once(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, text: str
) -> None:
    """Issue 11, item 13: one copy in the poison queue, no redeliveries, the reason in a status row."""
    _send_raw(azurite, text)

    async def scenario() -> dict[str, Any]:
        trigger = _trigger(app, azurite)
        await trigger.drain(idle_polls=2)
        [invocation] = trigger.invocations
        return {"ok": invocation.ok, "status": await _status(app, f"q-{invocation.message_id}")}

    result = run(scenario())
    assert result["ok"] is True  # handled, not crashed: the host does not redeliver it
    assert _poisoned(azurite) == [text]
    assert result["status"]["status"] == "failed"
    assert result["status"]["error"]["code"] == "invalid_message"
    assert sandbox.sent() == []


def test_a_claim_check_naming_a_missing_blob_is_poisoned_once_at_once_with_its_reason(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    """Issue 11, item 13: a blob that is gone will not come back by retrying five times."""
    report = base64.b64encode(b"y" * 100_000).decode()

    async def scenario() -> dict[str, Any]:
        accepted = await _post(app, {**MAIL, "attachments": [{"name": "r.txt", "contentBase64": report}]})
        [message] = _queue(azurite).peek_messages()
        claim = json.loads(base64.b64decode(message.content))["claimCheck"]
        BlobClient.from_connection_string(azurite.connection_string, *claim.split("/", 1)).delete_blob()
        trigger = _trigger(app, azurite)
        await trigger.drain(idle_polls=2)
        return {"id": accepted["id"], "status": await _status(app, accepted["id"]), "invocations": trigger.invocations}

    result = run(scenario())
    assert [(i.dequeue_count, i.ok) for i in result["invocations"]] == [(1, True)]
    assert result["status"]["status"] == "failed"
    assert result["status"]["error"]["code"] == "invalid_message"
    assert "no such blob" in result["status"]["error"]["message"]
    [poisoned] = _poisoned(azurite)
    assert result["id"] in poisoned
    assert sandbox.sent() == []


def test_a_queued_mail_without_an_id_keeps_one_status_row_through_throttling_and_the_attempt_cap_applies(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11, item 6: the copy handed back to the queue carries the id the first delivery gave the mail."""
    from azure.data.tables import TableClient

    import shared.outbox

    monkeypatch.setattr(shared.outbox, "MAX_ATTEMPTS", 2)
    _send_raw(azurite, json.dumps(MAIL))
    sandbox.set_faults(errorRate=1, errorStatuses=[503])  # Retry-After: 1 every time

    async def scenario() -> list[Any]:
        trigger = _trigger(app, azurite)
        deadline = time.monotonic() + 60
        while _queue(azurite).get_queue_properties().approximate_message_count and time.monotonic() < deadline:
            await trigger.poll_once()
            await asyncio.sleep(0.2)
        return trigger.invocations

    invocations = run(scenario())
    with TableClient.from_connection_string(azurite.connection_string, "mailstatus") as table:
        ours = {f"q-{i.message_id}" for i in invocations}
        rows = [r for r in table.list_entities() if r["PartitionKey"] in ours]
    assert len(invocations) == 2
    [row] = rows
    assert row["PartitionKey"] == f"q-{invocations[0].message_id}"
    assert row["status"] == "failed" and row["attempts"] == 2  # the cap, on the one row
    assert row["error_code"] == "ServiceUnavailable"
    assert _queue(azurite).get_queue_properties().approximate_message_count == 0


def test_a_storage_outage_between_graphs_202_and_the_status_write_does_not_send_the_mail_twice(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11, item 5: Storage is cut off while Graph holds six sends; once Graph has accepted a mail the
    sender keeps trying to record it (within its lease) instead of leaving it to be sent again."""
    from shared.config import settings

    from .helpers import NetworkCut

    relay = NetworkCut([azurite.blob_port, azurite.queue_port, azurite.table_port])
    through_relay = AzuriteProcess(tmp_path, tuple(relay.ports)).connection_string  # type: ignore[arg-type]
    monkeypatch.setenv("AzureWebJobsStorage", through_relay)
    monkeypatch.setenv("MAIL_SEND_LEASE_SECONDS", "20")
    monkeypatch.setenv("MAIL_DELIVERY_MODE", "sendmail")  # the draft mode records a step before the send
    settings.cache_clear()
    subjects = [f"Outage test {n}" for n in range(6)]

    async def scenario() -> list[dict[str, Any]]:
        ids = [(await _post(app, {**MAIL, "subject": subject}))["id"] for subject in subjects]
        sandbox.set_faults(latencyMs=2000)  # Graph holds each send for 2 s
        trigger = QueueTrigger(
            through_relay,
            "mail-outbox",
            user_function(app.mail_outbox),
            QueueSettings(max_polling_interval=0.2, lock_seconds=8),  # a failed message is back in 8 s
        )
        batch = asyncio.ensure_future(trigger.poll_once())
        while [(await _status(app, i))["status"] for i in ids] != ["sending"] * len(ids):
            await asyncio.sleep(0.05)
        relay.cut()  # the sends are in flight at Graph; their status writes will fail
        await asyncio.sleep(6)
        relay.mend()
        await batch
        deadline = time.monotonic() + 45  # long enough for the lease (20 s) to let a second send happen
        while time.monotonic() < deadline:
            statuses = [await _status(app, i) for i in ids]
            waiting = _queue(azurite).get_queue_properties().approximate_message_count
            if waiting == 0 and all(s["status"] == "sent" for s in statuses):
                break
            await trigger.poll_once()
            await asyncio.sleep(0.5)
        return [await _status(app, i) for i in ids]

    try:
        statuses = run(scenario())
    finally:
        relay.close()
    sent = sorted(m["subject"] for m in sandbox.sent())
    assert sent == sorted(subjects)  # each exactly once
    assert [s["status"] for s in statuses] == ["sent"] * 6
    assert [s["attempts"] for s in statuses] == [1] * 6


def test_a_refused_copy_that_a_sender_already_holds_keeps_its_blob_and_never_fails_the_mail_owning_the_id(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    """Review of issue 11, item 11: withdrawing a large refused copy after a sender received it (its pop receipt
    changed) used to delete the blob under it; the sender then poisoned the copy under the owner's id."""
    from shared.config import settings
    from shared.store import store

    report = base64.b64encode(b"y" * 100_000).decode()

    async def scenario() -> dict[str, Any]:
        await _post(app, {**MAIL, "id": "owned-1"})
        outbox = store(settings().storage).outbox
        refused = {
            **MAIL,
            "id": "owned-1",
            "subject": "another",
            "attachments": [{"name": "r", "contentBase64": report}],
        }
        enqueued = await outbox.enqueue("owned-1", refused)
        received = list(_queue(azurite).receive_messages(max_messages=32, visibility_timeout=1))
        assert enqueued.message_id in {m.id for m in received}  # a sender holds it now
        await outbox.withdraw(enqueued)  # PopReceiptMismatch: the copy and its blob stay for the sender
        await asyncio.sleep(1.2)
        await _trigger(app, azurite).drain()
        return await _status(app, "owned-1")

    status = run(scenario())
    assert status["status"] == "sent" and "error" not in status
    assert [m["subject"] for m in sandbox.sent()] == [MAIL["subject"]]
    assert _poisoned(azurite) == []
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("mail-payloads")
    assert [b.name for b in blobs.list_blobs(name_starts_with="owned-1")] == []  # the refused copy's blob went too


def test_a_mail_sent_while_its_status_could_not_be_recorded_is_recorded_sent_never_queued_again(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of issue 11, item 5: when the sender gives up recording `sent` (its lease nearly over), the crash
    record must not turn the mail back into `queued`, which would send it again on redelivery."""
    from shared.config import settings
    from shared.outbox import Sender
    from shared.store import store
    from shared.store.mail_status import MailStatuses

    monkeypatch.setenv("MAIL_SEND_LEASE_SECONDS", "5")  # 5 s lease, 5 s margin: no time to retry at all
    settings.cache_clear()

    class _RefusesSentOnce(MailStatuses):
        refused = False

        async def save(self, status: Any) -> Any:
            if status.status == "sent" and not self.refused:
                _RefusesSentOnce.refused = True
                from azure.core.exceptions import ServiceRequestError

                raise ServiceRequestError("Storage is unreachable")
            return await super().save(status)

    async def scenario() -> dict[str, Any]:
        await _post(app, {**MAIL, "id": "recorded-1"})
        [message] = _queue(azurite).receive_messages(visibility_timeout=30)
        config = settings()
        target = store(config.storage)
        target.statuses = _RefusesSentOnce(target.storage)
        from shared.graph import graph_client

        sender = Sender(config, target, graph_client(config))
        text = base64.b64decode(message.content).decode()
        with pytest.raises(Exception, match="could not be recorded"):
            await sender.deliver(text, message.id, 1)
        again = await sender.deliver(text, message.id, 2)  # the host's redelivery
        return {"status": await _status(app, "recorded-1"), "again": again.outcome}

    result = run(scenario())
    assert result["status"]["status"] == "sent"
    assert result["again"] == "duplicate"
    assert len(sandbox.sent()) == 1


def test_a_delivery_that_crashes_before_its_claim_leaves_another_instances_claim_alone(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    """Two copies of one mail: this one reads it `queued`, another instance claims it meanwhile, and this one
    then crashes (its Table call for the budget fails). The crash record used to turn the other's `sending`
    back into `queued`, so a third copy could claim the mail while the other was still sending it."""
    from datetime import timedelta

    from shared.config import settings
    from shared.graph import graph_client
    from shared.outbox import Sender
    from shared.pacer import Pacer
    from shared.store import store

    class _ClaimedMeanwhile(Pacer):
        async def pace(self, mail: Any, status: Any, text: str, payload: Any) -> Any:
            other = await self.store.statuses.get(status.id)
            other.status, other.attempts = "sending", other.attempts + 1
            other.lease_until = datetime.now(UTC) + timedelta(seconds=120)
            await self.store.statuses.save(other)  # the other instance's claim
            raise ConnectionError("the budget table did not answer")

    async def scenario() -> Any:
        await _post(app, {**MAIL, "id": "claimed-meanwhile"})
        [message] = _queue(azurite).receive_messages(visibility_timeout=30)
        config = settings()
        target = store(config.storage)
        sender = Sender(config, target, graph_client(config), pacer=_ClaimedMeanwhile(config, target))
        with pytest.raises(ConnectionError):
            await sender.deliver(base64.b64decode(message.content).decode(), message.id, 1)
        _queue(azurite).delete_message(message)
        return await target.statuses.get("claimed-meanwhile")

    row = run(scenario())
    assert row.status == "sending" and row.lease_until > datetime.now(UTC)  # still the other's
    assert row.error_code is None


def test_a_failure_concluded_by_a_delivery_whose_mail_was_taken_over_never_overwrites_sent(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    """A delivery whose lease ran out while another took the mail over and sent it gets Graph's refusal to send
    a draft that is no more: its `failed` must not replace the other's `sent`."""
    from datetime import timedelta

    from shared.config import settings
    from shared.lease import SendLease
    from shared.store import store

    async def scenario() -> Any:
        await _post(app, {**MAIL, "id": "taken-over"})
        config = settings()
        target = store(config.storage)
        ours = await target.statuses.get("taken-over")  # read when this delivery claimed it
        other = await target.statuses.get("taken-over")
        other.status = "sent"
        await target.statuses.save(other)  # the delivery that took over
        ours.status, ours.error_code = "failed", "ErrorInvalidOperation"
        written = await SendLease(target.statuses, ours, timedelta(seconds=5)).save_final(ours)
        return written, await target.statuses.get("taken-over")

    written, row = run(scenario())
    assert not written
    assert row.status == "sent" and row.error_code is None


def test_a_sent_outcome_is_written_over_a_newer_claim_keeping_its_attempt_count(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    """Graph has the mail: a delivery that sent it records `sent` even over another's later claim, and the
    attempt count does not go back (the issue's `attempts` 2 -> 1)."""
    from datetime import timedelta

    from shared.config import settings
    from shared.lease import SendLease
    from shared.store import store

    async def scenario() -> Any:
        await _post(app, {**MAIL, "id": "sent-over-claim"})
        target = store(settings().storage)
        ours = await target.statuses.get("sent-over-claim")
        ours.status, ours.attempts = "sending", 1
        await target.statuses.save(ours)  # our claim
        other = await target.statuses.get("sent-over-claim")
        other.attempts = 2
        await target.statuses.save(other)  # another delivery's, after our lease ran out
        ours.status = "sent"
        written = await SendLease(target.statuses, ours, timedelta(seconds=5)).save_final(ours)
        return written, await target.statuses.get("sent-over-claim")

    written, row = run(scenario())
    assert written and row.status == "sent" and row.attempts == 2
