"""The mailbox browser: mailboxes -> folders -> messages -> a message, HTML bodies caged."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from typing import Any

from sandbox.launcher import SandboxProcess
from sandbox.web import FIT_FRAME

from ..helpers import SENDER, SUPPORT, bearer


def test_pages_walk_from_mailboxes_to_a_message(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    home = sandbox.control.get("/")
    assert home.status_code == 200
    for upn in ("notifications@contoso.test", SUPPORT, "alice@contoso.test", "bob@contoso.test"):
        assert f'href="/mailboxes/{upn}"' in home.text

    folders = sandbox.control.get(f"/mailboxes/{SUPPORT}").text
    assert "Inbox" in folders and "Escalations" in folders and "2 unread / 3" in folders
    escalations = re.search(r'href="(/mailboxes/[^"]+/folders/[^"]+)">Escalations<', folders)
    assert escalations

    listing = sandbox.control.get(html.unescape(escalations.group(1))).text
    assert "Outage in region West" in listing and "Data export stuck at 90%" in listing
    link = re.search(r'href="(/mailboxes/[^"]+/messages/[^"]+)">Outage in region West<', listing)
    assert link

    page = sandbox.control.get(html.unescape(link.group(1))).text
    assert "ops@fabrikam.test" in page and "Our users in West cannot reach the API." in page


def test_html_bodies_render_in_a_script_free_sandboxed_iframe(sandbox: SandboxProcess) -> None:
    body = '<p>Hi</p><script>alert("owned")</script><img src=x onerror="alert(1)">'
    [delivered] = sandbox.deliver(
        "alice@contoso.test",
        [{"subject": "<b>subject</b>", "from": "x@fabrikam.test", "body": {"contentType": "html", "content": body}}],
    )
    assert sandbox.control is not None
    answer = sandbox.control.get(f"/mailboxes/alice@contoso.test/messages/{delivered['id']}")
    csp = answer.headers["Content-Security-Policy"]
    assert csp.startswith("default-src 'none'")
    fitter = base64.b64encode(hashlib.sha256(FIT_FRAME.encode()).digest()).decode()
    [script_src] = [d.strip() for d in csp.split(";") if d.strip().startswith("script-src")]
    assert script_src == f"script-src 'sha256-{fitter}'"  # no inline script runs but the page's frame fitter
    page = answer.text
    frame = re.search(r'<iframe class="body" sandbox="([^"]*)"', page)
    assert frame and "allow-scripts" not in frame.group(1)
    assert re.findall(r"<script>(.*?)</script>", page, re.S) == [FIT_FRAME]  # the body only in the escaped srcdoc
    assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt;" in page
    assert "&lt;b&gt;subject&lt;/b&gt;" in page


def test_unknown_mailboxes_and_messages_are_404(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    assert sandbox.control.get("/mailboxes/nobody@contoso.test").status_code == 404
    assert sandbox.control.get(f"/mailboxes/{SUPPORT}/messages/AAMkAGnope=").status_code == 404


def test_the_item_count_covers_all_folders(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    home = sandbox.control.get("/").text
    row = re.search(rf"{re.escape(SUPPORT)}</a></td>\s*<td>[^<]*</td><td>(\d+)</td><td>(\d+)</td>", home)
    assert row and (row.group(1), row.group(2)) == ("2", "5")  # Inbox unread; 3 in Inbox + 2 in Escalations


def test_a_message_shows_reply_to_x_headers_and_attachments_as_downloads(sandbox: SandboxProcess) -> None:
    content = base64.b64encode(b"id,cpu\n1,97\n").decode()
    assert sandbox.control is not None
    sandbox.control.post(
        f"/v1.0/users/{SENDER}/sendMail",
        headers=bearer(sandbox),
        json={
            "message": {
                "subject": "with extras",
                "toRecipients": [{"emailAddress": {"address": "alice@contoso.test"}}],
                "replyTo": [{"emailAddress": {"address": "oncall@fabrikam.test"}}],
                "internetMessageHeaders": [{"name": "x-alert-id", "value": "db-1/disk"}],
                "attachments": [{"name": "report.csv", "contentType": "text/csv", "contentBytes": content}],
            }
        },
    ).raise_for_status()
    [received] = sandbox.mailbox("alice@contoso.test")
    page = sandbox.control.get(f"/mailboxes/alice@contoso.test/messages/{received['id']}").text
    assert "<th>Reply-To</th>" in page and "oncall@fabrikam.test" in page
    assert "<th>x-alert-id</th><td>db-1/disk</td>" in page
    link = re.search(r'<a download="report.csv"\s+href="([^"]+)"', page)
    assert link
    download = sandbox.control.get(html.unescape(link.group(1)))
    assert download.content == b"id,cpu\n1,97\n"
    assert download.headers["Content-Disposition"].startswith("attachment;")


def test_the_mailbox_page_shows_drafts_ndrs_and_delayed_deliveries(
    sandbox: SandboxProcess, test_seed: dict[str, Any]
) -> None:
    sandbox.reset({**test_seed, "exchange": {"messagesPerMinute": 1}})
    assert sandbox.control is not None
    headers = bearer(sandbox)
    sandbox.control.post(f"/v1.0/users/{SENDER}/messages", headers=headers, json={"subject": "half written"})
    for subject, to in (
        ("first", "alice@contoso.test"),
        ("second", "alice@contoso.test"),
        ("lost", "nobody@contoso.test"),
    ):
        message = {"subject": subject, "toRecipients": [{"emailAddress": {"address": to}}]}
        sandbox.control.post(f"/v1.0/users/{SENDER}/sendMail", headers=headers, json={"message": message})
    mailbox = sandbox.control.get(f"/mailboxes/{SENDER}").text
    second = sandbox.sent()[1]
    assert f"delayed until {second['deliveredAt']}" in mailbox
    assert "NDR 550 5.1.10" in mailbox
    drafts = re.search(r'href="(/mailboxes/[^"]+/folders/[^"]+)">Drafts<', mailbox)
    inbox = re.search(r'href="(/mailboxes/[^"]+/folders/[^"]+)">Inbox<', mailbox)
    assert drafts and inbox
    assert re.search(
        r'class="tag">Draft</span>\s*<a [^>]+>half written<', sandbox.control.get(html.unescape(drafts.group(1))).text
    )
    assert re.search(
        r'class="tag">NDR</span>\s*<a [^>]+>Undeliverable: lost<',
        sandbox.control.get(html.unescape(inbox.group(1))).text,
    )
