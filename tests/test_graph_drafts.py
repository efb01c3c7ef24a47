"""shared.graph's delivery steps against the sandbox: marked drafts with immutable ids, finding them after a lost
answer, large attachments through resumable upload sessions, sending a draft, and the NDRs that come back."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from sandbox.launcher import SandboxProcess
from shared.errors import GraphError
from shared.graph import (
    DELIVERY_ID_PROPERTY,
    UPLOAD_CHUNK,
    Bounce,
    Draft,
    GraphClient,
    MessageGone,
    MessageState,
)

from .helpers import SENDER, bearer
from .test_graph import _with_client

ALICE = "alice@contoso.test"
GHOST = "ghost@contoso.test"  # in the tenant's domain, no such mailbox


def _message(subject: str = "Nightly export", to: tuple[str, ...] = (ALICE,), **extra: Any) -> dict[str, Any]:
    return {
        "subject": subject,
        "body": {"contentType": "text", "content": "The export is attached."},
        "toRecipients": [{"emailAddress": {"address": a}} for a in to],
        **extra,
    }


def _inline(name: str, content: bytes) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": name,
        "contentType": "text/plain",
        "contentBytes": base64.b64encode(content).decode(),
    }


def _graph_posts(sandbox: SandboxProcess, since: int, suffix: str) -> list[dict[str, Any]]:
    return [e for e in sandbox.requests(since) if e["method"] == "POST" and e["path"].endswith(suffix)]


def _attachments(sandbox: SandboxProcess, message_id: str) -> list[dict[str, Any]]:
    assert sandbox.control is not None
    headers = {**bearer(sandbox), "Prefer": 'IdType="ImmutableId"'}
    answer = sandbox.control.get(f"/v1.0/users/{SENDER}/messages/{message_id}/attachments", headers=headers)
    answer.raise_for_status()
    return list(answer.json()["value"])


# -- drafts -------------------------------------------------------------------------------------------------------
def test_a_draft_is_created_marked_with_its_inline_attachment_in_one_request(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    since = sandbox.last_seq()

    async def scenario(client: GraphClient) -> tuple[Draft, list[MessageState], MessageState | MessageGone]:
        message = _message(attachments=[_inline("summary.txt", b"42 rows")])
        draft = await client.create_draft(SENDER, message, "mail-0001")
        return draft, await client.find_marked(SENDER, "mail-0001"), await client.get_message(SENDER, draft.id)

    draft, marked, state = _with_client(app_env, scenario)
    assert draft.internet_message_id and draft.internet_message_id.startswith("<")
    assert [m.id for m in marked] == [draft.id]
    assert isinstance(state, MessageState) and state.is_draft and state.id == draft.id
    assert state.internet_message_id == draft.internet_message_id
    [stored] = sandbox.mailbox(SENDER, "drafts")
    assert stored["subject"] == "Nightly export" and stored["parentFolderId"] == state.parent_folder_id
    assert {"id": DELIVERY_ID_PROPERTY, "value": "mail-0001"} in stored["singleValueExtendedProperties"]
    assert [a["name"] for a in _attachments(sandbox, draft.id)] == ["summary.txt"]
    assert len(_graph_posts(sandbox, since, "/messages")) == 1  # attachment and marker travel with the draft


def test_an_inline_attachment_over_3_mb_is_refused_before_any_request(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    since = sandbox.last_seq()

    async def scenario(client: GraphClient) -> None:
        big = _message(attachments=[_inline("big.bin", b"\0" * (3 * 1024 * 1024 + 1))])
        with pytest.raises(ValueError, match=r"attachments\[0\].*upload session"):
            await client.create_draft(SENDER, big, "mail-big")

    _with_client(app_env, scenario)
    assert sandbox.requests(since) == []


def test_a_draft_created_under_ambiguous_answers_is_found_by_its_marker_and_not_created_twice(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    sandbox.set_faults(ambiguousRate=1, randomSeed=4)  # every POST is carried out, then its answer is lost
    since = sandbox.last_seq()

    async def scenario(client: GraphClient) -> tuple[GraphError, list[MessageState], list[MessageState]]:
        with pytest.raises(GraphError) as lost:
            await client.create_draft(SENDER, _message(), "mail-0002")
        # reads are answered; the next attempt finds out what happened before creating anything
        return lost.value, await client.find_marked(SENDER, "mail-0002"), await client.find_marked(SENDER, "other")

    lost, found, other = _with_client(app_env, scenario)
    assert lost.transient and lost.status in (0, 504)  # an unknown outcome, not a refusal
    assert len(_graph_posts(sandbox, since, "/messages")) == 1  # the SDK did not resend the POST
    [draft] = found
    assert draft.is_draft and other == []
    [stored] = sandbox.mailbox(SENDER, "drafts")  # one draft, whatever the client saw
    assert stored["subject"] == "Nightly export"


def test_a_send_whose_answer_is_lost_is_known_as_sent_by_its_immutable_id(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    async def scenario(client: GraphClient) -> tuple[Draft, GraphError, MessageState | MessageGone]:
        draft = await client.create_draft(SENDER, _message("Disk full"), "mail-0003")
        sandbox.set_faults(ambiguousRate=1, randomSeed=4)
        with pytest.raises(GraphError) as lost:
            await client.send_draft(SENDER, draft.id)
        return draft, lost.value, await client.get_message(SENDER, draft.id)

    since = sandbox.last_seq()
    draft, lost, state = _with_client(app_env, scenario)
    assert lost.transient
    assert len(_graph_posts(sandbox, since, "/send")) == 1
    assert isinstance(state, MessageState) and not state.is_draft  # not a draft any more: it was sent
    assert state.id == draft.id
    assert [m["subject"] for m in sandbox.mailbox(ALICE, "inbox")] == ["Disk full"]  # once


def test_an_immutable_id_survives_the_send_into_sent_items(app_env: dict[str, str], sandbox: SandboxProcess) -> None:
    async def scenario(client: GraphClient) -> tuple[Draft, MessageState | MessageGone, list[MessageState]]:
        draft = await client.create_draft(SENDER, _message(), "mail-0004")
        await client.send_draft(SENDER, draft.id)
        return draft, await client.get_message(SENDER, draft.id), await client.find_marked(SENDER, "mail-0004")

    draft, state, marked = _with_client(app_env, scenario)
    [sent] = sandbox.mailbox(SENDER, "sentitems")
    assert isinstance(state, MessageState)
    assert (state.id, state.is_draft, state.parent_folder_id) == (draft.id, False, sent["parentFolderId"])
    assert state.internet_message_id == draft.internet_message_id and state.sent_at
    assert [m.id for m in marked] == [draft.id]
    assert sandbox.mailbox(SENDER, "drafts") == []


def test_the_draft_path_costs_two_graph_requests_a_mail(app_env: dict[str, str], sandbox: SandboxProcess) -> None:
    since = sandbox.last_seq()

    async def scenario(client: GraphClient) -> None:
        draft = await client.create_draft(SENDER, _message(attachments=[_inline("a.txt", b"a")]), "mail-0011")
        await client.send_draft(SENDER, draft.id)

    _with_client(app_env, scenario)
    assert [(e["method"], e["status"]) for e in sandbox.requests(since)] == [("POST", 201), ("POST", 202)]


def test_a_throttled_draft_is_retried_in_process_but_a_503_is_handed_back(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    sandbox.set_faults(throttle={"requestsPerWindow": 1, "windowSeconds": 1})
    since = sandbox.last_seq()

    async def throttled(client: GraphClient) -> None:
        await client.find_marked(SENDER, "mail-0012")  # spends the window
        await client.create_draft(SENDER, _message(), "mail-0012")

    _with_client(app_env, throttled)
    posts = [e["status"] for e in _graph_posts(sandbox, since, "/messages")]
    assert posts[0] == 429 and posts[-1] == 201 and len(sandbox.mailbox(SENDER, "drafts")) == 1

    sandbox.set_faults(errorRate=1, errorStatuses=[503])
    since = sandbox.last_seq()

    async def unavailable(client: GraphClient) -> GraphError:
        with pytest.raises(GraphError) as raised:
            await client.create_draft(SENDER, _message(), "mail-0013")
        return raised.value

    error = _with_client(app_env, unavailable)
    assert (error.status, error.transient) == (503, True)
    assert len(_graph_posts(sandbox, since, "/messages")) == 1  # the caller finds out before trying again


def test_a_sent_draft_is_gone_until_its_sent_items_copy_appears(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    """Microsoft warns the Sent Items copy may lag: right after a send, `MessageGone` and no marked message do
    not mean "never sent"."""
    assert sandbox.control is not None
    sandbox.set_faults(sentItemsDelayMs=120_000)

    async def scenario(client: GraphClient) -> list[Any]:
        draft = await client.create_draft(SENDER, _message(), "mail-0014")
        await client.send_draft(SENDER, draft.id)
        during = [await client.get_message(SENDER, draft.id), await client.find_marked(SENDER, "mail-0014")]
        sandbox.control.put("/_sandbox/clock", json={"advanceSeconds": 121}).raise_for_status()
        return [*during, await client.get_message(SENDER, draft.id), await client.find_marked(SENDER, "mail-0014")]

    gone, unmarked, state, [marked] = _with_client(app_env, scenario)
    assert isinstance(gone, MessageGone) and unmarked == []
    assert isinstance(state, MessageState) and not state.is_draft and marked.id == state.id
    assert [m["subject"] for m in sandbox.mailbox(ALICE, "inbox")] == ["Nightly export"]


def test_a_message_that_is_not_there_is_gone_not_an_error(app_env: dict[str, str], sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None

    async def scenario(client: GraphClient) -> tuple[Any, Any]:
        draft = await client.create_draft(SENDER, _message(), "mail-0005")
        headers = bearer(sandbox)
        for _ in range(2):  # to Deleted Items, then for good
            deleted = sandbox.control.delete(f"/v1.0/users/{SENDER}/messages/{draft.id}", headers=headers)
            assert deleted.status_code == 204
        return await client.get_message(SENDER, draft.id), await client.get_message(SENDER, "AAkALgAAAAAAHYQDEapmEc2")

    deleted, unknown = _with_client(app_env, scenario)
    assert isinstance(deleted, MessageGone) and isinstance(unknown, MessageGone)


def test_refusals_come_back_as_graph_errors_with_graph_s_code(app_env: dict[str, str], sandbox: SandboxProcess) -> None:
    async def scenario(client: GraphClient) -> GraphError:
        with pytest.raises(GraphError) as refused:
            await client.create_draft("bob@contoso.test", _message(), "mail-0006")  # outside the app's scope
        return refused.value

    refused = _with_client(app_env, scenario)
    assert (refused.status, refused.code, refused.transient) == (403, "ErrorAccessDenied", False)


# -- upload sessions ----------------------------------------------------------------------------------------------
class Blob:
    """Bytes read by range, as a blob's ranged download reads them; counts reads and can fail once on one."""

    def __init__(self, content: bytes, fail_at_read: int | None = None) -> None:
        self.content = content
        self.reads: list[int] = []
        self.fail_at_read = fail_at_read

    async def __call__(self, start: int, length: int) -> bytes:
        self.reads.append(start)
        if len(self.reads) == self.fail_at_read:
            raise ConnectionResetError("the blob download broke off")
        return self.content[start : start + length]


def test_a_20_mb_attachment_uploaded_after_an_interruption_arrives_complete(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    content = os.urandom(20 * 1024 * 1024)
    chunks = -(-len(content) // UPLOAD_CHUNK)  # 6 of 3.75 MiB
    broken = Blob(content, fail_at_read=3)

    async def first_attempt(client: GraphClient) -> tuple[Draft, str]:
        draft = await client.create_draft(SENDER, _message(to=(ALICE,)), "mail-0007")
        session = await client.create_upload_session(SENDER, draft.id, "export.bin", len(content))
        assert session.next_offset == 0
        with pytest.raises(ConnectionResetError):
            await client.upload_attachment(SENDER, session.url, len(content), broken, start=session.next_offset)
        return draft, session.url

    draft, url = _with_client(app_env, first_attempt)
    resumed = Blob(content)

    async def next_attempt(client: GraphClient) -> tuple[int | None, str | None]:
        position = await client.upload_position(SENDER, url)
        location = await client.upload_attachment(SENDER, url, len(content), resumed)  # asks where it stands
        await client.send_draft(SENDER, draft.id)
        return position, location

    position, location = _with_client(app_env, next_attempt)  # a new client, as after a restart
    assert position == 2 * UPLOAD_CHUNK
    assert resumed.reads == [n * UPLOAD_CHUNK for n in range(2, chunks)]  # only what was missing
    assert location and "Attachments(" in location
    [attachment] = _attachments(sandbox, draft.id)
    assert attachment["name"] == "export.bin" and attachment["size"] == len(content)
    assert hashlib.sha256(base64.b64decode(attachment["contentBytes"])).digest() == hashlib.sha256(content).digest()
    [received] = sandbox.mailbox(ALICE, "inbox")
    assert [a["size"] for a in received["attachments"]] == [len(content)]


class CuttingRelay:
    """A TCP relay to the sandbox that aborts both sides once, after `cut_after` bytes from the client: the
    network going away in the middle of a chunk."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port, self.cut_after = target_port, cut_after
        self.sent, self.cut = 0, False
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        upstream_in, upstream_out = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def upward() -> None:
            while data := await client_in.read(65536):
                self.sent += len(data)
                if not self.cut and self.sent > self.cut_after:
                    self.cut = True
                    client_out.transport.abort()
                    upstream_out.transport.abort()
                    return
                upstream_out.write(data)
                await upstream_out.drain()
            upstream_out.close()

        async def downward() -> None:
            while data := await upstream_in.read(65536):
                client_out.write(data)
                await client_out.drain()
            client_out.close()

        await asyncio.gather(upward(), downward(), return_exceptions=True)


def test_a_chunk_cut_off_by_the_network_is_sent_again_from_where_the_session_stands(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    content = os.urandom(3 * UPLOAD_CHUNK + 1000)
    blob = Blob(content)

    async def scenario(client: GraphClient) -> tuple[str, bool]:
        draft = await client.create_draft(SENDER, _message(), "mail-0015")
        session = await client.create_upload_session(SENDER, draft.id, "cut.bin", len(content))
        url = urlsplit(session.url)
        relay = CuttingRelay(url.port or 443, cut_after=UPLOAD_CHUNK + UPLOAD_CHUNK // 2)  # mid second chunk
        port = await relay.start()
        try:
            relayed = url._replace(netloc=f"{url.hostname}:{port}").geturl()
            await client.upload_attachment(SENDER, relayed, len(content), blob, start=session.next_offset)
        finally:
            await relay.stop()
        return draft.id, relay.cut

    draft_id, cut = _with_client(app_env, scenario)
    assert cut
    assert blob.reads == [0, UPLOAD_CHUNK, UPLOAD_CHUNK, 2 * UPLOAD_CHUNK, 3 * UPLOAD_CHUNK]  # the cut one twice
    [attachment] = _attachments(sandbox, draft_id)
    assert base64.b64decode(attachment["contentBytes"]) == content


def test_a_stale_start_is_corrected_from_the_session_s_next_expected_range(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    content = os.urandom(5 * 1024 * 1024)
    blob = Blob(content)

    async def scenario(client: GraphClient) -> str:
        draft = await client.create_draft(SENDER, _message(), "mail-0008")
        session = await client.create_upload_session(SENDER, draft.id, "dump.bin", len(content))
        with pytest.raises(ConnectionResetError):  # one chunk arrives, then the source breaks off
            await client.upload_attachment(SENDER, session.url, len(content), Blob(content, fail_at_read=2), start=0)
        with pytest.raises(GraphError) as refused:  # a file of another size is not this session's
            await client.upload_attachment(SENDER, session.url, len(content) + 1, blob, start=0)
        assert refused.value.status == 400
        blob.reads.clear()
        await client.upload_attachment(SENDER, session.url, len(content), blob, start=0)  # 416, then resumes
        return draft.id

    draft_id = _with_client(app_env, scenario)
    assert blob.reads == [0, UPLOAD_CHUNK]  # the refused first chunk, then the one the session expected
    [attachment] = _attachments(sandbox, draft_id)
    assert base64.b64decode(attachment["contentBytes"]) == content


def test_an_attachment_streamed_in_uneven_pieces_is_uploaded_whole(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    content = os.urandom(9 * 1024 * 1024 + 17)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 1_000_003):  # not aligned with the chunks
            yield content[start : start + 1_000_003]

    async def scenario(client: GraphClient) -> str:
        draft = await client.create_draft(SENDER, _message(), "mail-0009")
        session = await client.create_upload_session(SENDER, draft.id, "stream.bin", len(content))
        await client.upload_attachment(SENDER, session.url, len(content), pieces(), start=session.next_offset)
        return draft.id

    draft_id = _with_client(app_env, scenario)
    [attachment] = _attachments(sandbox, draft_id)
    assert base64.b64decode(attachment["contentBytes"]) == content


def test_upload_chunks_must_be_multiples_of_320_kib_up_to_4_mb(
    app_env: dict[str, str], sandbox: SandboxProcess
) -> None:
    async def scenario(client: GraphClient) -> None:
        for size in (1000, 13 * 320 * 1024):
            with pytest.raises(ValueError, match="320"):
                await client.upload_attachment(SENDER, "https://unused", 10, Blob(b"x" * 10), chunk_size=size)

    _with_client(app_env, scenario)


# -- non-delivery reports ----------------------------------------------------------------------------------------
@pytest.fixture
def limited(sandbox: SandboxProcess, test_seed: dict[str, Any]) -> SandboxProcess:
    """The test sandbox with Exchange's transport on (the test seed turns it off), NDRs included."""
    sandbox.reset({**test_seed, "exchange": {}})
    return sandbox


def test_an_ndr_for_an_unknown_recipient_in_the_tenant_is_found_and_matched(
    app_env: dict[str, str], limited: SandboxProcess
) -> None:
    limited.deliver(SENDER, [{"subject": "Re: Nightly export", "from": "alice@contoso.test"}])  # not an NDR

    async def scenario(client: GraphClient) -> tuple[Draft, list[Bounce], list[Bounce]]:
        draft = await client.create_draft(SENDER, _message(to=(ALICE, GHOST)), "mail-0010")
        await client.send_draft(SENDER, draft.id)
        later = await client.list_bounces(SENDER, since=datetime(2099, 1, 1, tzinfo=UTC))
        return draft, await client.list_bounces(SENDER, since=datetime.now(UTC) - timedelta(minutes=5)), later

    draft, bounces, later = _with_client(app_env, scenario)
    [bounce] = bounces
    assert bounce.internet_message_id == draft.internet_message_id
    assert (bounce.dsn_code, bounce.recipients) == ("5.1.10", [GHOST])
    assert bounce.diagnostic and bounce.diagnostic.startswith("550 5.1.10 RESOLVER.ADR.RecipientNotFound")
    assert later == []
    assert [m["subject"] for m in limited.mailbox(ALICE, "inbox")] == ["Nightly export"]  # the others got it


EXCHANGE_ONLINE_NDR = """<html><body>
<p>Your message to <a href="mailto:ghost@contoso.test">ghost@contoso.test</a> couldn't be delivered.</p>
<p>ghost wasn't found at contoso.test.</p>
<p>Diagnostic information for administrators:</p>
<p>Generating server: BN8PR11MB3587.namprd11.prod.outlook.com</p>
<p>ghost@contoso.test<br>Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by
SMTP address lookup'</p>
<p>old@contoso.test<br>Remote Server returned '550 5.1.1 RESOLVER.ADR.ExRecipNotFound; not found'</p>
<p>Original message headers:</p>
<pre>From: Notifications &lt;notifications@contoso.test&gt;
To: ghost@contoso.test, old@contoso.test, alice@contoso.test
X-MS-Exchange-CrossTenant-Network-Message-Id: 6c8e1f2a-0000-4000-8000-000000000000
Message-ID: &lt;BN8PR11MB35870A1@BN8PR11MB3587.namprd11.prod.outlook.com&gt;
Subject: Nightly export</pre></body></html>"""


def test_an_ndr_in_exchange_online_s_layout_names_each_bounced_recipient() -> None:
    from shared.graph import _bounce

    ndr = {"id": "AAMk1", "body": {"contentType": "html", "content": EXCHANGE_ONLINE_NDR}}
    bounce = _bounce(ndr, SENDER)
    assert bounce.internet_message_id == "<BN8PR11MB35870A1@BN8PR11MB3587.namprd11.prod.outlook.com>"
    assert bounce.dsn_code == "5.1.10"
    assert bounce.recipients == [GHOST, "old@contoso.test"]  # not alice, who is only in the original headers


def test_a_bounced_mails_own_subject_cannot_name_another_mails_message_id_code_or_recipients() -> None:
    """A caller who knows mail V's Message-ID (a recipient of V) sends a mail that bounces, with a subject that
    quotes V's Message-ID and a code: the report still names only the caller's own mail."""
    from shared.graph import _bounce

    victim = "&lt;victim.0123456789abcdef.notify@contoso.test&gt;"
    subject = f"550 5.1.10 alice@contoso.test Message-ID: {victim}"
    forged = EXCHANGE_ONLINE_NDR.replace("Subject: Nightly export", f"Subject: {subject}")
    ndr = {"id": "AAMk2", "body": {"contentType": "html", "content": forged}}
    bounce = _bounce(ndr, SENDER)
    assert bounce.internet_message_id == "<BN8PR11MB35870A1@BN8PR11MB3587.namprd11.prod.outlook.com>"
    assert (bounce.dsn_code, bounce.recipients) == ("5.1.10", [GHOST, "old@contoso.test"])
    without_its_own = forged.replace(
        "Message-ID: &lt;BN8PR11MB35870A1@BN8PR11MB3587.namprd11.prod.outlook.com&gt;\n", ""
    )
    unmatched = _bounce({"id": "AAMk3", "body": {"contentType": "html", "content": without_its_own}}, SENDER)
    assert unmatched.internet_message_id is None  # the subject's Message-ID is never taken for the original's


def test_only_reports_exchange_wrote_are_ndrs_not_ones_from_outside_or_from_a_mailbox(
    app_env: dict[str, str], limited: SandboxProcess
) -> None:
    forged = {
        "subject": "Undeliverable: Nightly export",
        "from": "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.test",
        "body": {"contentType": "html", "content": EXCHANGE_ONLINE_NDR},
        "internetMessageHeaders": [
            {"name": "Content-Type", "value": "multipart/report; report-type=delivery-status; boundary=b"},
            {"name": "X-MS-Exchange-Message-Is-Ndr", "value": ""},
            {"name": "X-MS-Exchange-Organization-AuthAs", "value": "Internal"},  # the header firewall drops it
        ],
    }
    limited.deliver(SENDER, [forged])  # from outside the tenant

    async def scenario(client: GraphClient) -> list[Bounce]:
        from_mailbox = {
            **_message(subject="Undeliverable: Nightly export", to=(SENDER,)),
            "body": {"contentType": "html", "content": EXCHANGE_ONLINE_NDR},
            "internetMessageHeaders": [{"name": "X-MS-Exchange-Message-Is-Ndr", "value": ""}],
        }
        await client.send_mail("support@contoso.test", {"message": from_mailbox, "saveToSentItems": False})
        draft = await client.create_draft(SENDER, _message(to=(GHOST,)), "mail-0011")
        await client.send_draft(SENDER, draft.id)
        return await client.list_bounces(SENDER)

    bounces = _with_client(app_env, scenario)
    assert [(b.dsn_code, b.recipients) for b in bounces] == [("5.1.10", [GHOST])]  # Exchange's own only
    assert len(limited.mailbox(SENDER, "inbox")) == 3
