"""The mailbox browser: mailboxes -> folders -> messages -> a message, HTML bodies caged."""

from __future__ import annotations

import html
import re

from sandbox.launcher import SandboxProcess

from ..helpers import SUPPORT


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
    assert "script-src" not in answer.headers["Content-Security-Policy"]
    assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")
    page = answer.text
    assert '<iframe sandbox=""' in page
    assert "<script>" not in page  # the body is only inside the escaped srcdoc attribute
    assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt;" in page
    assert "&lt;b&gt;subject&lt;/b&gt;" in page


def test_unknown_mailboxes_and_messages_are_404(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    assert sandbox.control.get("/mailboxes/nobody@contoso.test").status_code == 404
    assert sandbox.control.get(f"/mailboxes/{SUPPORT}/messages/AAMkAGnope=").status_code == 404
