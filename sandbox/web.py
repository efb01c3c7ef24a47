"""A small web page to browse the sandbox's mailboxes: mailboxes -> folders -> messages -> a message.

HTML bodies are shown in an iframe with `sandbox` (no scripts; same-origin, so the page can fit the frame to
its content) and the pages carry a CSP that allows no script but the page's own frame fitter, so mail under
test cannot run anything in the developer's browser.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import quote

from jinja2 import DictLoader, Environment, select_autoescape
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from .clock import CLOCK, stamp
from .state import Sandbox
from .store import User

# The pages' one script: it fits the body frame to its content, which it can read because the frame is
# same-origin. Mail in the frame still runs nothing: the frame's sandbox lacks allow-scripts, and the CSP (which
# a srcdoc frame inherits) allows no script but this one, by its hash.
FIT_FRAME = (
    'for(const f of document.querySelectorAll("iframe.body")){const fit=()=>{const d=f.contentDocument;'
    'if(d&&d.documentElement){f.style.height=d.documentElement.scrollHeight+"px"}};'
    'f.addEventListener("load",fit);fit()}'
)
_FIT_FRAME_HASH = base64.b64encode(hashlib.sha256(FIT_FRAME.encode()).digest()).decode()
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-src 'self'; "
    f"script-src 'sha256-{_FIT_FRAME_HASH}'"
)

_TEMPLATES = {
    "base.html": """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{% block title %}Sandbox{% endblock %} - Graph sandbox</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;color:#1b1b1b}
table{border-collapse:collapse;width:100%}td,th{padding:.35rem .6rem;border-bottom:1px solid #ddd;text-align:left}
.unread{font-weight:600}nav a{margin-right:.5rem}iframe{width:100%;height:32rem;border:1px solid #ccc}
.muted{color:#666}ul.tree{list-style:none;padding-left:1.2rem}
.tag{font-size:.75rem;padding:0 .3rem;border:1px solid #999;border-radius:.2rem}
</style></head><body><nav><a href="/">Mailboxes</a>{% block nav %}{% endblock %}</nav>
<h1>{{ self.title() }}</h1>{% block content %}{% endblock %}</body></html>""",
    "mailboxes.html": """{% extends "base.html" %}{% block title %}Mailboxes{% endblock %}
{% block content %}<table>
<tr><th>Mailbox</th><th>Name</th><th>Unread (Inbox)</th><th>Items (all folders)</th></tr>
{% for row in rows %}<tr><td><a href="/mailboxes/{{ row.user.upn }}">{{ row.user.upn }}</a></td>
<td>{{ row.user.display_name }}</td><td>{{ row.unread }}</td><td>{{ row.total }}</td></tr>{% endfor %}
</table>{% endblock %}""",
    "folders.html": """{% extends "base.html" %}{% block title %}{{ user.upn }}{% endblock %}
{% block content %}{% macro tree(nodes) %}<ul class="tree">{% for node in nodes %}
<li><a href="/mailboxes/{{ user.upn }}/folders/{{ node.folder.id | urlencode }}">{{ node.folder.displayName }}</a>
<span class="muted">{{ node.folder.unreadItemCount }} unread / {{ node.folder.totalItemCount }}</span>
{% if node.children %}{{ tree(node.children) }}{% endif %}</li>{% endfor %}</ul>{% endmacro %}
{{ tree(nodes) }}
{% if sent %}<h2>Sent mail</h2><table><tr><th>Subject</th><th>Submitted</th><th>Delivered</th><th>Outcome</th></tr>
{% for s in sent %}<tr><td>{{ s.subject or '(no subject)' }}</td><td>{{ s.submittedAt }}</td>
<td>{{ s.deliveredAt or '-' }}</td><td>{% if s.ndr %}NDR {{ s.ndr.status }}
{% elif s.deliveredAt and s.deliveredAt > now %}delayed until {{ s.deliveredAt }}{% else %}delivered{% endif %}</td>
</tr>{% endfor %}</table>{% endif %}
{% endblock %}""",
    "messages.html": """{% extends "base.html" %}{% block title %}{{ folder.displayName }}{% endblock %}
{% block nav %}<a href="/mailboxes/{{ user.upn }}">{{ user.upn }}</a>{% endblock %}
{% block content %}<p class="muted">{{ messages | length }} messages</p>
<table><tr><th>Received</th><th>From</th><th>Subject</th><th>Categories</th></tr>
{% for m in messages %}<tr class="{{ '' if m.isRead else 'unread' }}"><td>{{ m.receivedDateTime }}</td>
<td>{{ (m['from'] or {}).get('emailAddress', {}).get('address', '') }}</td>
<td>{% if m.isDraft %}<span class="tag">Draft</span> {% endif %}
{% if is_ndr(m) %}<span class="tag">NDR</span> {% endif %}
<a href="/mailboxes/{{ user.upn }}/messages/{{ m.id | urlencode }}">{{ m.subject or '(no subject)' }}</a></td>
<td>{{ m.categories | join(', ') }}</td></tr>{% endfor %}</table>{% endblock %}""",
    "message.html": """{% extends "base.html" %}{% block title %}{{ message.subject or '(no subject)' }}{% endblock %}
{% block nav %}<a href="/mailboxes/{{ user.upn }}">{{ user.upn }}</a>{% endblock %}
{% block content %}<table>
<tr><th>From</th><td>{{ (message['from'] or {}).get('emailAddress', {}).get('address', '') }}</td></tr>
<tr><th>To</th><td>{{ message.toRecipients | map(attribute='emailAddress.address') | join(', ') }}</td></tr>
{% if message.ccRecipients %}<tr><th>Cc</th>
<td>{{ message.ccRecipients | map(attribute='emailAddress.address') | join(', ') }}</td></tr>{% endif %}
{% if message.replyTo %}<tr><th>Reply-To</th>
<td>{{ message.replyTo | map(attribute='emailAddress.address') | join(', ') }}</td></tr>{% endif %}
{% if message.isDraft %}<tr><th>Draft</th><td>yes (not sent)</td></tr>{% endif %}
{% for h in message.internetMessageHeaders or [] %}<tr><th>{{ h.name }}</th><td>{{ h.value }}</td></tr>{% endfor %}
<tr><th>Received</th><td>{{ message.receivedDateTime }}</td></tr>
<tr><th>Importance</th><td>{{ message.importance }}</td></tr>
<tr><th>Read</th><td>{{ 'yes' if message.isRead else 'no' }}</td></tr>
<tr><th>Categories</th><td>{{ message.categories | join(', ') }}</td></tr>
{% if message.attachments %}<tr><th>Attachments</th>
<td>{% for a in message.attachments %}<a download="{{ a.name }}"
href="/mailboxes/{{ user.upn }}/messages/{{ message.id | urlencode }}/attachments/{{ a.id | urlencode }}"
>{{ a.name }}</a>
({{ a.size }} bytes) {% endfor %}</td></tr>{% endif %}
</table>
{% if message.body.contentType == 'html' %}
<iframe class="body" sandbox="allow-same-origin" referrerpolicy="no-referrer" title="Message body"
srcdoc="{{ message.body.content }}"></iframe><script>{{ fit_frame | safe }}</script>
{% else %}<pre>{{ message.body.content }}</pre>{% endif %}{% endblock %}""",
}
_env = Environment(loader=DictLoader(_TEMPLATES), autoescape=select_autoescape(default=True))
_env.globals["is_ndr"] = lambda m: any(
    h.get("name") == "X-MS-Exchange-Message-Is-Ndr" for h in m.get("internetMessageHeaders") or []
)


def _page(name: str, **context: Any) -> Response:
    html = _env.get_template(name).render(**context)
    return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})


def _user(sandbox: Sandbox, upn: str) -> User:
    try:
        return sandbox.store.user(upn)
    except KeyError:
        raise HTTPException(404, f"No mailbox '{upn}'.") from None


async def mailboxes(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    rows = []
    for user in sandbox.store.users():
        inbox, _ = sandbox.store.query_folders(user, folder_id=sandbox.store.folder(user, "inbox").id)
        rows.append({"user": user, "unread": inbox[0]["unreadItemCount"], "total": sandbox.store.message_count(user)})
    return _page("mailboxes.html", rows=rows)


async def folders(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    user = _user(sandbox, request.path_params["upn"])
    all_folders, _ = sandbox.store.query_folders(user, include_hidden=False)
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    for folder in all_folders:
        by_parent.setdefault(folder["parentFolderId"], []).append(folder)

    def nodes(parent_id: str) -> list[dict[str, Any]]:
        return [{"folder": f, "children": nodes(f["id"])} for f in by_parent.get(parent_id, [])]

    root = sandbox.store.folder(user, "msgfolderroot").id
    sent = sandbox.store.outbound(0, user)[-50:][::-1]  # the latest 50, newest first
    return _page("folders.html", user=user, nodes=nodes(root), sent=sent, now=stamp(CLOCK.time()))


async def folder_messages(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    user = _user(sandbox, request.path_params["upn"])
    try:
        folder = sandbox.store.folder(user, request.path_params["folder"])
    except KeyError:
        raise HTTPException(404, "No such folder.") from None
    documents, _ = sandbox.store.query_folders(user, folder_id=folder.id)
    return _page(
        "messages.html", user=user, folder=documents[0], messages=sandbox.store.mailbox_messages(user, folder.id)
    )


def _message(request: Request) -> tuple[User, dict[str, Any]]:
    """The mailbox's user and the message the path names; 404 when there is none."""
    sandbox: Sandbox = request.app.state.sandbox
    user = _user(sandbox, request.path_params["upn"])
    try:
        return user, sandbox.store.message(user, request.path_params["message"])
    except KeyError:
        raise HTTPException(404, "No such message.") from None


async def message(request: Request) -> Response:
    user, document = _message(request)
    return _page("message.html", user=user, message=document, fit_frame=FIT_FRAME)


async def attachment(request: Request) -> Response:
    """An attachment's bytes, as a download (never rendered by the browser)."""
    _, document = _message(request)
    for item in document.get("attachments") or []:
        if item["id"] == request.path_params["attachment"]:
            name = quote(str(item.get("name") or "attachment"))
            return Response(
                base64.b64decode(item.get("contentBytes") or ""),
                media_type="application/octet-stream",
                headers={
                    "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
                    "X-Content-Type-Options": "nosniff",
                },
            )
    raise HTTPException(404, "No such attachment.")


def routes() -> list[Route]:
    return [
        Route("/", mailboxes),
        Route("/mailboxes/{upn}", folders),
        Route("/mailboxes/{upn}/folders/{folder}", folder_messages),
        Route("/mailboxes/{upn}/messages/{message}", message),
        Route("/mailboxes/{upn}/messages/{message}/attachments/{attachment}", attachment),
    ]
