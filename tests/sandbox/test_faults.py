"""`PUT /_sandbox/faults`: latency, injected errors, dropped connections, throttling; the request log."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_http.middleware.options import RetryHandlerOption
from msgraph.generated.models.email_address import EmailAddress
from msgraph.generated.models.message import Message
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.recipient import Recipient
from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody

from sandbox.launcher import SandboxProcess

from ..helpers import SENDER, SUPPORT, bearer, graph_client


def _get(sandbox: SandboxProcess, headers: dict[str, str], mailbox: str = SUPPORT) -> httpx.Response:
    assert sandbox.control is not None
    return sandbox.control.get(f"/v1.0/users/{mailbox}/mailFolders", headers=headers)


def test_latency_delays_graph_answers_only(sandbox: SandboxProcess) -> None:
    headers = bearer(sandbox)
    sandbox.set_faults(latencyMs=400)
    started = time.perf_counter()
    assert _get(sandbox, headers).status_code == 200
    assert time.perf_counter() - started >= 0.4
    started = time.perf_counter()
    bearer(sandbox)  # identity endpoints are not slowed
    assert time.perf_counter() - started < 0.4


@pytest.mark.parametrize(
    ("status", "code", "retry_after"),
    [(500, "InternalServerError", False), (503, "ServiceUnavailable", True), (429, "TooManyRequests", True)],
)
def test_injected_errors_use_the_configured_statuses(
    sandbox: SandboxProcess, status: int, code: str, retry_after: bool
) -> None:
    headers = bearer(sandbox)
    sandbox.set_faults(errorRate=1, errorStatuses=[status])
    answer = _get(sandbox, headers)
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code
    assert ("Retry-After" in answer.headers) is retry_after
    sandbox.set_faults(errorRate=0)
    assert _get(sandbox, headers).status_code == 200


def test_an_error_rate_fails_about_that_share_of_requests(sandbox: SandboxProcess) -> None:
    headers = bearer(sandbox)
    sandbox.set_faults(errorRate=0.3, randomSeed=7)
    statuses = [_get(sandbox, headers).status_code for _ in range(200)]
    assert 40 <= statuses.count(503) <= 80
    assert statuses.count(200) + statuses.count(503) == 200


def test_dropped_connections_break_the_response(sandbox: SandboxProcess) -> None:
    headers = bearer(sandbox)
    sandbox.set_faults(dropConnectionRate=1)
    with pytest.raises(httpx.TransportError):
        _get(sandbox, headers)
    sandbox.set_faults()
    assert _get(sandbox, headers).status_code == 200
    assert sandbox.requests()[-2]["dropped"] is True


def test_concurrency_throttle_answers_429_with_an_integer_retry_after(sandbox: SandboxProcess) -> None:
    headers = bearer(sandbox)
    sandbox.set_faults(latencyMs=600, throttle={"concurrentPerMailbox": 2})
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _get(sandbox, headers), range(6)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 2 and statuses.count(429) == 4
    throttled = next(a for a in answers if a.status_code == 429)
    assert throttled.json()["error"]["code"] == "ApplicationThrottled"
    assert throttled.headers["Retry-After"].isdigit()
    # other mailboxes have their own budget
    assert _get(sandbox, headers, SENDER).status_code == 200


def test_window_throttle_counts_requests_per_mailbox(sandbox: SandboxProcess) -> None:
    headers = bearer(sandbox)
    sandbox.set_faults(throttle={"requestsPerWindow": 3, "windowSeconds": 30})
    assert [_get(sandbox, headers).status_code for _ in range(3)] == [200, 200, 200]
    throttled = _get(sandbox, headers)
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= 30


def test_msgraph_retry_middleware_rides_through_a_throttled_burst(sandbox: SandboxProcess) -> None:
    sandbox.set_faults(latencyMs=300, throttle={"concurrentPerMailbox": 4})
    since = sandbox.last_seq()

    async def burst() -> None:
        async with graph_client(sandbox) as graph:
            sends = [
                graph.users.by_user_id(SENDER).send_mail.post(
                    SendMailPostRequestBody(
                        message=Message(
                            subject=f"alert {i}",
                            to_recipients=[Recipient(email_address=EmailAddress(address="bob@contoso.test"))],
                        ),
                        save_to_sent_items=False,
                    )
                )
                for i in range(12)
            ]
            await asyncio.gather(*sends)

    asyncio.run(burst())
    assert len(sandbox.mailbox("bob@contoso.test")) == 12
    statuses = [entry["status"] for entry in sandbox.requests(since)]
    assert statuses.count(202) == 12
    assert statuses.count(429) >= 4


def test_the_request_log_records_each_graph_request(sandbox: SandboxProcess) -> None:
    headers = bearer(sandbox)
    since = sandbox.last_seq()
    _get(sandbox, headers)
    _get(sandbox, headers, "nobody@contoso.test")
    first, second = sandbox.requests(since)
    assert first["seq"] == since + 1 and second["seq"] == since + 2
    assert (first["method"], first["path"], first["status"], first["mailbox"]) == (
        "GET",
        f"/users/{SUPPORT}/mailFolders",
        200,
        SUPPORT,
    )
    assert first["ms"] >= 0
    assert second["status"] == 404
    assert sandbox.requests(since + 1) == [second]


def test_bad_fault_settings_are_refused(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    for body in ({"errorRate": 2}, {"latencyMs": -1}, {"throttle": {"concurrentPerMailbox": 0}}, {"bogus": 1}):
        answer = sandbox.control.put("/_sandbox/faults", json=body)
        assert answer.status_code == 400, body


def _alice_mail(subject: str) -> dict[str, Any]:
    return {"message": {"subject": subject, "toRecipients": [{"emailAddress": {"address": "alice@contoso.test"}}]}}


async def _send_disk_full(sandbox: SandboxProcess, config: RequestConfiguration[Any]) -> None:
    """One sendMail to alice@ through msgraph-sdk, with the request options (retries) the test gives."""
    body = SendMailPostRequestBody(
        message=Message(
            subject="Disk full", to_recipients=[Recipient(email_address=EmailAddress(address="alice@contoso.test"))]
        )
    )
    async with graph_client(sandbox) as graph:
        await graph.users.by_user_id(SENDER).send_mail.post(body, config)


def test_ambiguous_send_mail_delivers_exactly_once_while_the_sdk_sees_a_failure(sandbox: SandboxProcess) -> None:
    since = sandbox.last_seq()
    sandbox.set_faults(ambiguousRate=1, randomSeed=3)
    config = RequestConfiguration(options=[RetryHandlerOption(max_retries=0)])  # one attempt: no blind retry
    with pytest.raises((ODataError, httpx.TransportError)):
        asyncio.run(_send_disk_full(sandbox, config))
    assert [m["subject"] for m in sandbox.mailbox("alice@contoso.test")] == ["Disk full"]
    [entry] = [e for e in sandbox.requests(since) if e["path"].endswith("/sendMail")]
    assert entry["ambiguous"] is True


def test_ambiguous_answers_are_a_504_or_a_dropped_connection_half_each(sandbox: SandboxProcess) -> None:
    headers = bearer(sandbox)
    since = sandbox.last_seq()
    sandbox.set_faults(ambiguousRate=1, randomSeed=11)
    assert sandbox.control is not None
    outcomes = []
    for n in range(12):
        try:
            answer = sandbox.control.post(f"/v1.0/users/{SENDER}/sendMail", headers=headers, json=_alice_mail(f"m{n}"))
        except httpx.TransportError:
            outcomes.append("dropped")
        else:
            assert answer.status_code == 504
            assert answer.json()["error"]["code"] == "GatewayTimeout"
            outcomes.append("504")
    assert 2 <= outcomes.count("dropped") <= 10 and 2 <= outcomes.count("504") <= 10
    assert len(sandbox.mailbox("alice@contoso.test")) == 12  # every one was carried out
    logged = [e for e in sandbox.requests(since) if e["path"].endswith("/sendMail")]
    assert all(e["ambiguous"] for e in logged)
    assert sum(1 for e in logged if e.get("dropped")) == outcomes.count("dropped")


def test_ambiguous_faults_spare_reads(sandbox: SandboxProcess) -> None:
    headers = bearer(sandbox)
    sandbox.set_faults(ambiguousRate=1)
    assert _get(sandbox, headers).status_code == 200
    assert "ambiguous" not in sandbox.requests()[-1]


def test_ambiguous_batch_sub_requests_are_carried_out_and_answered_504(sandbox: SandboxProcess) -> None:
    headers = bearer(sandbox)
    since = sandbox.last_seq()
    sandbox.set_faults(ambiguousRate=1, randomSeed=5)
    assert sandbox.control is not None
    requests = [
        {"id": str(n), "method": "POST", "url": f"/users/{SENDER}/sendMail", "body": _alice_mail(f"b{n}"),
         "headers": {"Content-Type": "application/json"}}
        for n in range(3)
    ]  # fmt: skip
    dropped = False
    try:
        answer = sandbox.control.post("/v1.0/$batch", headers=headers, json={"requests": requests})
    except httpx.TransportError:
        dropped = True  # one sub-request drew "connection dropped": the whole answer is lost
    else:
        assert sorted(r["status"] for r in answer.json()["responses"]) == [504, 504, 504]
    assert len(sandbox.mailbox("alice@contoso.test")) == 3
    [batch] = [e for e in sandbox.requests(since) if e["path"] == "/$batch"]
    assert all(sub["ambiguous"] for sub in batch["requests"])
    assert bool(batch.get("dropped")) is dropped


def test_msgraph_retries_of_an_ambiguous_504_duplicate_the_mail(sandbox: SandboxProcess) -> None:
    sandbox.set_faults(ambiguousRate=1, randomSeed=4)  # this seed draws three 504s in a row
    config = RequestConfiguration(options=[RetryHandlerOption(delay=0, max_retries=2)])
    with pytest.raises(ODataError) as raised:
        asyncio.run(_send_disk_full(sandbox, config))
    assert raised.value.response_status_code == 504
    assert [m["subject"] for m in sandbox.mailbox("alice@contoso.test")] == ["Disk full"] * 3  # one per attempt
