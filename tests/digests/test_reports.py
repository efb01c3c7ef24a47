"""`report: new` (delta) and `report: waiting` against the sandbox and Azurite: what each reports over several
rounds (new, read, moved, deleted messages; folders created, renamed, deleted), what they cost in Graph
requests, that neither PATCHes, that a dry run leaves the delta links alone, and that a run killed after its
record is finished by the next without a second mail."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devhost.azurite import AzuriteProcess
from sandbox.launcher import SandboxProcess
from shared.config import settings
from shared.store import store

from ..helpers import SUPPORT, bearer, documentation, drain_queue, http, run, user_function

ROUTING = """
receivers:
  - {name: oncall, to: [alice@contoso.test]}
route: {receiver: oncall}
digests:
  - name: arrivals
    report: new
    mailbox: support@contoso.test
    folders: [Inbox, Orders]
    to: [alice@contoso.test]
    max_items: 5
  - name: backlog
    report: waiting
    mailbox: support@contoso.test
    folders: [Inbox, Orders]
    to: [bob@contoso.test]
    max_items: 3
  - name: tagged
    report: waiting
    tag: Digested
    mailbox: support@contoso.test
    folders: [Inbox, Orders]
    to: [bob@contoso.test]
"""
FOLDERS = {"Inbox": 6, "Inbox/Escalations": 3, "Orders": 4, "Orders/Returns": 2, "Projects": 5}


@pytest.fixture
def reports(app_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from shared.routing_file import notify_config

    routing = tmp_path / "notify.yaml"
    routing.write_text(ROUTING)
    monkeypatch.setenv("NOTIFY_CONFIG", str(routing))
    notify_config.cache_clear()
    yield {d.name: d for d in notify_config(settings()).digests}
    notify_config.cache_clear()


@pytest.fixture
def mailbox(sandbox: SandboxProcess, test_seed: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """support@ with exactly FOLDERS' unread messages (Projects is not read by either digest)."""
    seed = copy.deepcopy(test_seed)
    for user in seed["users"]:
        if user["userPrincipalName"] == SUPPORT:
            user["messages"] = []
    sandbox.reset(seed)
    return {
        path: sandbox.deliver(
            SUPPORT, [{"subject": f"{path} {n}", "from": "c@fabrikam.test", "folder": path} for n in range(count)]
        )
        for path, count in FOLDERS.items()
    }


def _digest(digest: Any, *, dry_run: bool = False) -> dict[str, Any]:
    from shared.digests.mailbox import run_mailbox_digest
    from shared.graph import graph_client

    async def go() -> dict[str, Any]:
        config = settings()
        done = await run_mailbox_digest(
            digest, config, graph_client(config), store(config.storage), datetime.now(UTC), dry_run=dry_run
        )
        return done.answer()

    answer: dict[str, Any] = run(go())
    return answer


def _graph(sandbox: SandboxProcess, method: str, path: str, body: Any = None) -> Any:
    assert sandbox.control is not None
    answer = sandbox.control.request(method, f"/v1.0/users/{SUPPORT}{path}", json=body, headers=bearer(sandbox))
    assert answer.status_code < 300, answer.text
    return answer.json() if answer.content else None


def _folder_id(sandbox: SandboxProcess, path: str) -> str:
    [message] = sandbox.deliver(SUPPORT, [{"subject": "marker", "from": "m@fabrikam.test", "folder": path}])
    _graph(sandbox, "DELETE", f"/messages/{message['id']}")
    return str(message["parentFolderId"])


def _deliver(app_env: dict[str, str], azurite: AzuriteProcess) -> None:
    import function_app

    run(drain_queue(azurite.connection_string, "mail-outbox", function_app.mail_outbox))


def test_new_reports_each_arrival_once_over_rounds_of_new_read_moved_and_deleted_mail_and_never_patches(
    reports: dict[str, Any],
    mailbox: dict[str, list[dict[str, Any]]],
    sandbox: SandboxProcess,
    azurite: AzuriteProcess,
    app_env: dict[str, str],
) -> None:
    since = sandbox.last_seq()
    first = _digest(reports["arrivals"])
    assert first["report"] == "new" and first["outcome"] == "sent" and first["messages"] == 15
    assert {f["path"]: f["count"] for f in first["folders"]} == {
        "Inbox": 6,
        "Inbox/Escalations": 3,
        "Orders": 4,
        "Orders/Returns": 2,
    }
    requests = sandbox.requests(since)
    assert [r for r in requests if r["method"] != "GET"] == []  # nothing tagged, nothing changed
    deltas = [r for r in requests if r["path"].lower().endswith("/delta")]
    assert len(requests) == len(deltas) == 1 + 4  # the folder tree's round + one round per chosen folder

    # between runs: 2 new, one reported message read, one moved to another chosen folder, one deleted
    sandbox.deliver(
        SUPPORT,
        [{"subject": f"late {n}", "from": "d@fabrikam.test", "folder": f} for n, f in enumerate(["Inbox", "Orders"])],
    )
    inbox = mailbox["Inbox"]
    _graph(sandbox, "PATCH", f"/messages/{inbox[0]['id']}", {"isRead": True})
    _graph(sandbox, "POST", f"/messages/{inbox[1]['id']}/move", {"destinationId": _folder_id(sandbox, "Orders")})
    _graph(sandbox, "DELETE", f"/messages/{inbox[2]['id']}")
    since = sandbox.last_seq()
    second = _digest(reports["arrivals"])
    assert second["messages"] == 2 and second["outcome"] == "sent"
    assert {f["path"]: f["count"] for f in second["folders"]} == {
        "Inbox": 1,
        "Inbox/Escalations": 0,
        "Orders": 1,
        "Orders/Returns": 0,
    }
    assert len(sandbox.requests(since)) == 5

    third = _digest(reports["arrivals"])
    assert third["outcome"] == "nothing_new" and third["messages"] == 0

    _deliver(app_env, azurite)
    subjects = sorted(m["subject"] for m in sandbox.sent())
    assert subjects == [
        "[DIGEST] 15 new in support@contoso.test (arrivals)",
        "[DIGEST] 2 new in support@contoso.test (arrivals)",
    ]
    assert not [m for m in sandbox.mailbox(SUPPORT) if m.get("categories")]
    second_mail = next(m for m in sandbox.sent() if m["subject"].startswith("[DIGEST] 2 new"))
    assert "late 0" in second_mail["body"]["content"] and "late 1" in second_mail["body"]["content"]


def test_new_follows_folders_created_renamed_and_deleted_between_runs_with_a_note(
    reports: dict[str, Any],
    mailbox: dict[str, list[dict[str, Any]]],
    sandbox: SandboxProcess,
    azurite: AzuriteProcess,
    app_env: dict[str, str],
) -> None:
    assert _digest(reports["arrivals"])["messages"] == 15
    _graph(sandbox, "PATCH", f"/mailFolders/{_folder_id(sandbox, 'Orders/Returns')}", {"displayName": "Refunds"})
    _graph(sandbox, "DELETE", f"/mailFolders/{_folder_id(sandbox, 'Inbox/Escalations')}")
    sandbox.deliver(
        SUPPORT,
        [
            {"subject": "in a new folder", "from": "e@fabrikam.test", "folder": "Inbox/Urgent"},
            {"subject": "in the renamed one", "from": "e@fabrikam.test", "folder": "Orders/Refunds"},
        ],
    )
    answer = _digest(reports["arrivals"])
    assert {f["path"]: f["count"] for f in answer["folders"]} == {
        "Inbox": 0,
        "Inbox/Urgent": 1,
        "Orders": 0,
        "Orders/Refunds": 1,
    }
    assert sorted(answer["notes"]) == [
        "Inbox/Escalations was deleted, moved or renamed away since the last digest; no longer read.",
        "Orders/Returns is now Orders/Refunds.",
    ]
    _deliver(app_env, azurite)
    last = next(m for m in sandbox.sent() if m["subject"].startswith("[DIGEST] 2 new"))
    assert "Orders/Returns is now Orders/Refunds." in last["body"]["content"]


def test_a_dry_run_of_new_leaves_the_delta_links_so_the_real_run_reports_the_same(
    reports: dict[str, Any], mailbox: dict[str, list[dict[str, Any]]], sandbox: SandboxProcess
) -> None:
    since = sandbox.last_seq()
    dry = _digest(reports["arrivals"], dry_run=True)
    assert dry["outcome"] == "dry_run"
    assert dry["mail"]["subject"] == "[DIGEST] 15 new in support@contoso.test (arrivals)"
    again = _digest(reports["arrivals"], dry_run=True)
    assert again["messages"] == 15
    assert [r for r in sandbox.requests(since) if r["method"] != "GET"] == []
    assert _digest(reports["arrivals"])["messages"] == 15


class _DiesSavingTheCursor:
    """A cursor store whose process 'dies' (raises) when a run saves its cursor: after the mail was submitted."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def get(self, digest: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._inner.get(digest)
        return answer

    async def put(self, digest: str, cursor: dict[str, Any]) -> None:
        raise ConnectionError("the worker died")


def test_a_new_run_killed_after_its_mail_is_finished_by_the_next_without_a_second_mail(
    reports: dict[str, Any],
    mailbox: dict[str, list[dict[str, Any]]],
    sandbox: SandboxProcess,
    azurite: AzuriteProcess,
    app_env: dict[str, str],
) -> None:
    from shared.digests.mailbox import run_mailbox_digest
    from shared.graph import graph_client

    async def dying_run() -> None:
        config = settings()
        target = store(config.storage)
        target.digest_cursors = _DiesSavingTheCursor(target.digest_cursors)  # type: ignore[assignment]
        await run_mailbox_digest(reports["arrivals"], config, graph_client(config), target, datetime.now(UTC))

    with pytest.raises(ConnectionError):
        run(dying_run())
    answer = _digest(reports["arrivals"])
    assert answer["resumedEarlierRun"] is True and answer["outcome"] == "nothing_new"
    _deliver(app_env, azurite)
    assert [m["subject"] for m in sandbox.sent()] == ["[DIGEST] 15 new in support@contoso.test (arrivals)"]


def test_waiting_counts_unread_from_the_folder_listing_lists_the_newest_and_reports_them_again_tomorrow(
    reports: dict[str, Any],
    mailbox: dict[str, list[dict[str, Any]]],
    sandbox: SandboxProcess,
    azurite: AzuriteProcess,
    app_env: dict[str, str],
) -> None:
    _graph(sandbox, "PATCH", f"/messages/{mailbox['Orders'][0]['id']}", {"isRead": True})
    since = sandbox.last_seq()
    first = _digest(reports["backlog"])
    assert first["report"] == "waiting" and first["messages"] == 14
    assert {f["path"]: f["count"] for f in first["folders"]} == {
        "Inbox": 6,
        "Inbox/Escalations": 3,
        "Orders": 3,
        "Orders/Returns": 2,
    }
    requests = sandbox.requests(since)
    assert [r for r in requests if r["method"] != "GET"] == []
    message_pages = [r for r in requests if r["path"].lower().endswith("/messages")]
    assert len(message_pages) == 4  # one page of the newest per folder with unread mail
    second = _digest(reports["backlog"])
    assert second["messages"] == 14 and second["outcome"] == "sent"  # still unread: reported again
    _deliver(app_env, azurite)
    mails = [m for m in sandbox.sent() if m["subject"] == "[DIGEST] 14 waiting in support@contoso.test (backlog)"]
    assert len(mails) == 2
    assert "and 11 more" in mails[0]["body"]["content"]  # max_items is 3


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ("    timezone: Europe/Berln\n    schedule: '0 7 * * *'", r"line 7: digests\[0\]\.timezone: 'Europe/Berln'"),
        ("    report: waiting\n    unread_only: false", r"digests\[0\]\.unread_only: report: waiting reports unread"),
        ("    report: new\n    since_last_run: true", r"digests\[0\]\.since_last_run: report: new always"),
        ("    tag: Done\n    category: Done", r"digests\[0\]: set tag or its earlier name category"),
        ("    report: everything", r"digests\[0\]\.report: Input should be 'new' or 'waiting'"),
    ],
)
def test_a_digest_whose_options_do_not_fit_its_kind_is_refused_naming_the_field_and_line(
    tmp_path: Path, lines: str, error: str
) -> None:
    from shared.config import ConfigError
    from shared.routing_file import load_notify_config

    routing = tmp_path / "notify.yaml"
    head = "receivers: [{name: a, to: [a@contoso.test]}]\nroute: {receiver: a}\ndigests:\n"
    routing.write_text(head + "  - name: x\n    mailbox: s@contoso.test\n    to: [a@contoso.test]\n" + lines + "\n")
    with pytest.raises(ConfigError, match=error):
        load_notify_config(routing)


def test_a_tagging_waiting_digest_counts_each_folders_unread_mail_on_every_run(
    reports: dict[str, Any], mailbox: dict[str, list[dict[str, Any]]], sandbox: SandboxProcess
) -> None:
    unread = {"Inbox": 6, "Inbox/Escalations": 3, "Orders": 4, "Orders/Returns": 2}
    first = _digest(reports["tagged"])
    assert first["outcome"] == "sent" and first["messages"] == 15 and first["tagged"] == 15
    assert {f["path"]: f["count"] for f in first["folders"]} == unread
    second = _digest(reports["tagged"])  # all tagged, none reported again; still unread, so still counted
    assert second["outcome"] == "nothing_new" and second["messages"] == 0
    assert {f["path"]: f["count"] for f in second["folders"]} == unread


DOCUMENTED_RUN = re.compile(
    r"curl -s -X POST '?http://127\.0\.0\.1:7071/api/(digests|alert-digests)/([a-z0-9-]+)/run(\?dryRun=true)?"
)


def test_the_documented_digest_runs_work_against_the_shipped_routing_file_and_the_default_seed(
    app_env: dict[str, str], sandbox: SandboxProcess, azurite: AzuriteProcess
) -> None:
    import function_app
    from shared.routing_file import notify_config

    notify_config.cache_clear()  # app_env leaves NOTIFY_CONFIG unset: the shipped config/notify.yaml
    examples = DOCUMENTED_RUN.findall("\n".join(documentation().values()))  # the README's and docs/digests.md's
    assert {(kind, name) for kind, name, _ in examples} == {
        ("digests", "support-new"),
        ("digests", "support-waiting"),
        ("alert-digests", "alert-digest"),
    }
    warning = {"name": "CertificateExpiring", "severity": "warning", "summary": "web-1's certificate expires in 9 d"}
    posted = run(user_function(function_app.post_alerts)(http("POST", "/api/alerts", warning)))
    assert posted.status_code == 202, posted.get_body()
    for kind, name, dry_run in examples:
        endpoint, key = (
            (function_app.run_digest, "name") if kind == "digests" else (function_app.run_alert_digest, "receiver")
        )
        params = {"dryRun": "true"} if dry_run else {}
        request = http("POST", f"/api/{kind}/{name}/run", route={key: name}, params=params, raw=b"")
        response = run(user_function(endpoint)(request))
        answer = json.loads(response.get_body())
        assert response.status_code == 200, answer
        assert answer["outcome"] == ("dry_run" if dry_run else "sent"), answer
        if kind == "digests":  # the seed's four unread messages in the Inbox and Inbox/Escalations
            assert {f["path"]: f["count"] for f in answer["folders"]} == {"Inbox": 2, "Inbox/Escalations": 2}
