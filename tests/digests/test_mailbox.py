"""The mailbox digest against the sandbox and Azurite: counts, tagging, the request budget, throttling and 503s,
a run that dies between the mail and the tagging, a dry run, and a mailbox the app may not read."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from devhost.azurite import AzuriteProcess
from sandbox.launcher import SandboxProcess
from shared.config import settings
from shared.store import store
from shared.store.digest_status import DigestStatus

from ..helpers import SUPPORT, audit_rows, drain_queue, http, mail_sends, run, user_function

FOLDERS = {  # 12 folders, some nested, 3,000 unread messages in all
    "Inbox": 700,
    "Inbox/Escalations": 300,
    "Inbox/Escalations/Tier 3": 50,
    "Inbox/Billing": 400,
    "Inbox/Billing/Refunds": 150,
    "Inbox/Partners": 100,
    "Orders": 500,
    "Orders/Returns": 200,
    "Orders/Returns/Damaged": 100,
    "Projects": 250,
    "Projects/Alpha": 150,
    "Projects/Beta": 100,
}
PAGE = 1000  # the digest's $top


@pytest.fixture
def support_mailbox(sandbox: SandboxProcess, test_seed: dict[str, Any]) -> dict[str, int]:
    """support@ with exactly the 3,000 unread messages of FOLDERS (the default seed's five removed) and five
    read ones that no digest may report."""
    seed = copy.deepcopy(test_seed)
    for user in seed["users"]:
        if user["userPrincipalName"] == SUPPORT:
            user["messages"] = []
    sandbox.reset(seed)
    for path, count in FOLDERS.items():
        sandbox.deliver(
            SUPPORT,
            [
                {
                    "subject": f"{path} question {n}",
                    "from": f"customer{n}@fabrikam.test",
                    "body": f"Message {n} waiting in {path}.",
                    "folder": path,
                    "receivedDateTime": f"2026-11-{1 + n % 20:02d}T{n % 24:02d}:{n % 60:02d}:00Z",
                }
                for n in range(count)
            ],
        )
    sandbox.deliver(
        SUPPORT, [{"subject": f"already read {n}", "from": "x@fabrikam.test", "isRead": True} for n in range(5)]
    )
    return FOLDERS


def _run_digest(app: Any, name: str = "support-unread", dry_run: bool = False) -> tuple[int, dict[str, Any]]:
    params = {"dryRun": "true"} if dry_run else {}
    request = http("POST", f"/api/digests/{name}/run", route={"name": name}, params=params, raw=b"")
    response = run(user_function(app.run_digest)(request))
    return response.status_code, json.loads(response.get_body())


def _deliver_outbox(app: Any, azurite: AzuriteProcess) -> None:
    run(drain_queue(azurite.connection_string, "mail-outbox", app.mail_outbox))


def _tagged(sandbox: SandboxProcess) -> int:
    return sum(1 for m in sandbox.mailbox(SUPPORT) if "Digested" in (m.get("categories") or []))


def test_a_digest_of_3000_unread_messages_in_12_folders_counts_tags_and_stays_within_its_request_budget(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess, support_mailbox: dict[str, int]
) -> None:
    since = sandbox.last_seq()
    status, answer = _run_digest(digest_app)
    _deliver_outbox(digest_app, azurite)
    assert status == 200, answer
    assert answer["outcome"] == "sent" and answer["messages"] == 3000
    assert {f["path"]: f["count"] for f in answer["folders"]} == support_mailbox
    assert answer["tagged"] == 3000 and answer["untagged"] == 0
    assert _tagged(sandbox) == 3000

    requests = sandbox.requests(since)
    folder_pages = [
        r for r in requests if r["method"] == "GET" and r["path"].lower().endswith(("/mailfolders", "/childfolders"))
    ]
    message_pages = [r for r in requests if r["method"] == "GET" and r["path"].lower().endswith("/messages")]
    sends = mail_sends(requests)
    batches = [r for r in requests if r["path"] == "/$batch"]
    parents = 1 + sum(1 for p in FOLDERS if any(q.startswith(p + "/") for q in FOLDERS))  # root + folders with children
    assert len(folder_pages) == parents  # one page each: at most 100 children per parent
    assert len(message_pages) == sum(max(1, math.ceil(n / PAGE)) for n in FOLDERS.values())
    assert len(sends) == 1
    assert len(batches) == math.ceil(3000 / 20)
    drafts = [r for r in requests if r["method"] == "POST" and r["path"].endswith("/messages")]  # the outbox's draft
    assert len(requests) == len(folder_pages) + len(message_pages) + len(drafts) + 1 + math.ceil(3000 / 20)
    assert all(len(b["requests"]) <= 20 for b in batches)

    [mail] = sandbox.sent()
    assert mail["subject"] == "[DIGEST] 3000 waiting in support@contoso.test (support-unread)"
    body = mail["body"]["content"]
    assert "and 2990 more" in body  # max_items is 10
    assert "Inbox/Billing/Refunds" in body and "/mailboxes/support@contoso.test/messages/" in body


def test_a_second_run_reports_nothing_and_a_message_arriving_in_between_comes_in_the_next_run_only(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess, support_mailbox: dict[str, int]
) -> None:
    assert _run_digest(digest_app)[1]["outcome"] == "sent"
    status, second = _run_digest(digest_app)
    assert status == 200 and second["outcome"] == "nothing_new" and second["messages"] == 0
    sandbox.deliver(SUPPORT, [{"subject": "Late arrival", "from": "late@fabrikam.test", "folder": "Orders/Returns"}])
    _, third = _run_digest(digest_app)
    assert third["outcome"] == "sent" and third["messages"] == 1
    assert {f["path"]: f["count"] for f in third["folders"]}["Orders/Returns"] == 201  # unread: tagged or not
    _deliver_outbox(digest_app, azurite)
    subjects = sorted(m["subject"] for m in sandbox.sent())
    assert subjects == [
        "[DIGEST] 1 waiting in support@contoso.test (support-unread)",
        "[DIGEST] 3000 waiting in support@contoso.test (support-unread)",
    ]


def test_under_throttling_and_2_percent_503s_the_run_still_completes_correctly(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess, support_mailbox: dict[str, int]
) -> None:
    sandbox.set_faults(throttle={"concurrentPerMailbox": 4}, errorRate=0.02, errorStatuses=[503], randomSeed=11)
    since = sandbox.last_seq()
    status, answer = _run_digest(digest_app)
    assert status == 200, answer
    assert answer["outcome"] == "sent" and answer["messages"] == 3000 and answer["untagged"] == 0
    _deliver_outbox(digest_app, azurite)
    sandbox.set_faults()
    assert _tagged(sandbox) == 3000
    assert len(sandbox.sent()) == 1
    failed_subrequests = [
        s for r in sandbox.requests(since) if r["path"] == "/$batch" for s in r["requests"] if s["status"] >= 500
    ]
    assert failed_subrequests, "the 503s should have hit some sub-requests"


class _DiesWhileTagging:
    """A Graph client whose process 'dies' (raises) at the first tagging batch: after the mail was submitted."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def batch_update(self, mailbox: str, updates: dict[str, Any]) -> Any:
        raise ConnectionError("the worker died")


def test_a_run_that_died_between_the_mail_and_the_tagging_is_finished_without_a_second_digest(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess, support_mailbox: dict[str, int]
) -> None:
    from shared.digests.mailbox import run_mailbox_digest
    from shared.graph import graph_client
    from shared.routing_file import notify_config

    async def dying_run() -> None:
        config = settings()
        digest = notify_config(config).digests[0]
        graph = _DiesWhileTagging(graph_client(config))
        await run_mailbox_digest(digest, config, graph, store(config.storage), _now())  # type: ignore[arg-type]

    with pytest.raises(ConnectionError):
        run(dying_run())
    assert _tagged(sandbox) == 0
    status, answer = _run_digest(digest_app)  # the next run finishes the recorded one, then finds nothing new
    assert status == 200 and answer["resumedEarlierRun"] is True and answer["outcome"] == "nothing_new"
    _deliver_outbox(digest_app, azurite)
    assert _tagged(sandbox) == 3000
    assert [m["subject"] for m in sandbox.sent()] == ["[DIGEST] 3000 waiting in support@contoso.test (support-unread)"]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_a_dry_run_answers_the_mail_without_sending_or_tagging(
    digest_app: Any, sandbox: SandboxProcess, support_mailbox: dict[str, int]
) -> None:
    since = sandbox.last_seq()
    status, answer = _run_digest(digest_app, dry_run=True)
    assert status == 200 and answer["outcome"] == "dry_run" and answer["messages"] == 3000
    assert answer["mail"]["subject"].startswith("[DIGEST] 3000 waiting")
    assert "Inbox/Escalations/Tier 3" in answer["mail"]["html"] and "text" not in answer["mail"]
    writes = [r for r in sandbox.requests(since) if r["method"] != "GET"]
    assert writes == [] and _tagged(sandbox) == 0


def test_a_mailbox_the_app_may_not_read_fails_that_digest_only_recorded_in_status_and_audit(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess, support_mailbox: dict[str, int]
) -> None:
    from azure.functions.timer import TimerRequest

    status, answer = _run_digest(digest_app, "forbidden")
    assert status == 502 and answer["error"]["code"] == "ErrorAccessDenied"

    run(user_function(digest_app.digest_timer)(TimerRequest(past_due=False)))  # due for both: every minute
    _deliver_outbox(digest_app, azurite)
    assert [m["subject"] for m in sandbox.sent()] == ["[DIGEST] 3000 waiting in support@contoso.test (support-unread)"]

    async def status() -> DigestStatus:
        return await store(settings().storage).digest_statuses.get("forbidden")

    row = run(status())
    audit = audit_rows(azurite.connection_string)
    assert row.last_outcome == "failed" and row.last_error.startswith("ErrorAccessDenied")
    failures = [a for a in audit if a["operation"] == "mailboxDigest" and a["outcome"] == "failed"]
    assert failures and failures[0]["mailbox"] == "alice@contoso.test"


def test_unknown_digests_are_404(digest_app: Any) -> None:
    status, answer = _run_digest(digest_app, "no-such-digest")
    assert status == 404 and "support-unread" in answer["error"]["message"]


def test_health_checks_each_digests_mailbox_and_folders_without_naming_them(
    digest_app: Any, support_mailbox: dict[str, int]
) -> None:
    response = run(user_function(digest_app.health_details)(http("GET", "/api/health/details")))
    body = json.loads(response.get_body())
    assert response.status_code == 503
    assert body["checks"]["digest:support-unread"]["ok"] is True
    assert body["checks"]["digest:forbidden"] == {
        "ok": False,
        "error": "DigestFailed: Graph 403 ErrorAccessDenied",
        "ms": body["checks"]["digest:forbidden"]["ms"],
    }
    assert "alice@contoso.test" not in response.get_body().decode()


def test_concurrent_runs_of_a_tagging_digest_report_each_message_once_and_the_others_answer_digest_running(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess, test_seed: dict[str, Any]
) -> None:
    """Four runs at once (the timer and manual runs): one claims the digest, the others answer 409
    `digest_running`; across every trial and every digest mail, each message is reported once."""
    import asyncio

    seed = copy.deepcopy(test_seed)
    for user in seed["users"]:
        if user["userPrincipalName"] == SUPPORT:
            user["messages"] = []
    sandbox.reset(seed)
    sandbox.deliver(SUPPORT, [{"subject": "read", "folder": f, "isRead": True} for f in ("Orders", "Projects")])
    request = http("POST", "/api/digests/support-unread/run", route={"name": "support-unread"}, raw=b"")

    async def four_runs() -> list[tuple[int, dict[str, Any]]]:
        responses = await asyncio.gather(*(user_function(digest_app.run_digest)(request) for _ in range(4)))
        return [(r.status_code, json.loads(r.get_body())) for r in responses]

    subjects = []
    for trial in range(6):
        batch = [f"trial {trial} question {n}" for n in range(4)]
        subjects += batch
        sandbox.deliver(SUPPORT, [{"subject": s, "from": "customer@fabrikam.test", "folder": "Inbox"} for s in batch])
        answers = run(four_runs())
        assert sum(1 for status, _ in answers if status == 200) >= 1
        for status, answer in answers:
            assert status == 200 or (status == 409 and answer["error"]["code"] == "digest_running"), answer
        assert sum(answer.get("messages", 0) for status, answer in answers if status == 200) == len(batch)
    _deliver_outbox(digest_app, azurite)
    bodies = [m["body"]["content"] for m in sandbox.sent()]
    reported = {s: sum(body.count(f"{s}<") for body in bodies) for s in subjects}
    assert reported == dict.fromkeys(subjects, 1)
    assert _tagged(sandbox) == len(subjects)


def test_a_claim_left_by_a_run_that_died_expires_and_the_next_run_takes_the_digest_over(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess, support_mailbox: dict[str, int]
) -> None:
    from datetime import UTC, datetime

    from shared.store.storage import DIGEST_STATUS_TABLE, time_text

    async def dead_run() -> None:
        claims = store(settings().storage).digest_statuses
        assert await claims.claim_run("support-unread", "dead-run") is not None  # and never released

    async def expire() -> None:
        row = {"PartitionKey": "support-unread", "RowKey": "running", "expires": time_text(datetime.now(UTC))}
        await store(settings().storage).storage.merge_rows(DIGEST_STATUS_TABLE, [row])

    run(dead_run())
    status, answer = _run_digest(digest_app)
    assert status == 409 and answer["error"]["code"] == "digest_running"
    assert _run_digest(digest_app, dry_run=True)[0] == 200  # a dry run needs no claim
    run(expire())  # RUN_LEASE later
    status, answer = _run_digest(digest_app)
    assert status == 200 and answer["outcome"] == "sent" and answer["messages"] == 3000
    assert _run_digest(digest_app)[0] == 200  # the claim was released: the next run is not refused
