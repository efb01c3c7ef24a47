"""Attachments handed over by producers (issue 16, point 2's intake): the `mail-attachments` blobs, blob
references resolved for the sender, and `POST /api/mail` as `multipart/form-data`, on Azurite."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from devhost.azurite import AzuriteProcess
from shared.api import ApiRequest, post_mail
from shared.attachments import resolve_attachments
from shared.config import StorageAccount, settings
from shared.errors import AppError, InvalidMessage
from shared.mail import parse_mail
from shared.store import Store

from .helpers import ROOT, Devhost, http, run, user_function

MIB = 1024 * 1024
MAIL = {"to": ["alice@contoso.test"], "subject": "The quarterly report", "text": "attached"}
BOUNDARY = "notifier-test-boundary-7d1f"


# -- building forms ----------------------------------------------------------------------------------------


def part(
    name: str, content: bytes, filename: str | None = None, content_type: str | None = None, **headers: str
) -> bytes:
    """One form part, headers and content, as a browser or curl -F writes it."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    lines = [f"Content-Disposition: {disposition}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{key.replace('_', '-')}: {value}" for key, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


def mail_part(mail: Any = MAIL) -> bytes:
    return part("mail", json.dumps(mail).encode(), content_type="application/json")


def file_part(filename: str, content: bytes, content_type: str | None = "application/pdf") -> bytes:
    return part("attachment", content, filename, content_type)


def form(*parts: bytes, boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body of the parts."""
    delimiter = f"--{boundary}".encode()
    return b"".join(delimiter + b"\r\n" + p + b"\r\n" for p in parts) + delimiter + b"--\r\n"


FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


# -- fixtures and helpers ----------------------------------------------------------------------------------


@pytest.fixture
def app(app_env: dict[str, str]) -> Any:
    import function_app

    return function_app


def _post_form(app: Any, body: bytes, content_type: str = FORM_TYPE, **headers: str) -> tuple[int, Any, dict[str, str]]:
    request = http("POST", "/api/mail", raw=body, headers={"Content-Type": content_type, **headers})
    response = run(user_function(app.post_mail)(request))
    text = response.get_body()
    return response.status_code, json.loads(text) if text else None, dict(response.headers)


def _queued(azurite: AzuriteProcess) -> list[dict[str, Any]]:
    queue = QueueClient.from_connection_string(
        azurite.connection_string, "mail-outbox", message_decode_policy=TextBase64DecodePolicy()
    )
    messages = [json.loads(m.content) for m in queue.peek_messages(max_messages=32)]
    queue.close()
    return messages


def _blobs(azurite: AzuriteProcess, prefix: str = "") -> dict[str, bytes]:
    """The attachment blobs (under a prefix) and their content."""
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = service.get_container_client("mail-attachments")
        if not container.exists():
            return {}
        return {
            f"mail-attachments/{b.name}": container.download_blob(b.name).readall()
            for b in container.list_blobs(name_starts_with=prefix)
        }


def _store(azurite: AzuriteProcess) -> Store:
    return Store(StorageAccount(azurite.connection_string))


# -- the store's attachment blobs --------------------------------------------------------------------------


def test_a_file_is_stored_in_4_mib_blocks_and_read_back_in_ranges(azurite: AzuriteProcess) -> None:
    content = os.urandom(9 * MIB + 123)

    async def pieces() -> AsyncIterator[bytes]:  # odd sizes, as a multipart parser hands them over
        for start in range(0, len(content), 1_000_003):
            yield content[start : start + 1_000_003]

    async def scenario() -> tuple[str, str, int | None, bytes, bytes, int | None]:
        store = _store(azurite)
        try:
            streamed = await store.attachments.put(
                "report-1", 0, "Q3 report.pdf", pieces(), content_type="application/pdf"
            )
            given = await store.attachments.put("report..1", 1, "small.txt", b"hello")
            read = store.attachments.reader(streamed)
            middle = await read(4 * MIB - 10, 20)  # across the first block's end
            tail = await read(len(content) - 5, 100)  # past the end: what there is
            return (
                streamed,
                given,
                await store.attachments.size(streamed),
                middle,
                tail,
                await store.attachments.size(given),
            )
        finally:
            await store.close()

    streamed, given, size, middle, tail, small = run(scenario())
    assert streamed.startswith("mail-attachments/report-1/") and streamed.endswith("-0")
    assert given.startswith("mail-attachments/report.1/")  # an id's `..` never reaches a reference
    assert size == len(content) and small == 5
    assert middle == content[4 * MIB - 10 : 4 * MIB + 10] and tail == content[-5:]
    assert _blobs(azurite, streamed.removeprefix("mail-attachments/"))[streamed] == content
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        blob = service.get_blob_client("mail-attachments", streamed.removeprefix("mail-attachments/"))
        committed, _ = blob.get_block_list("committed")
        properties = blob.get_blob_properties()
    assert [b.size for b in committed] == [4 * MIB, 4 * MIB, MIB + 123]
    assert properties.content_settings.content_type == "application/pdf"
    assert properties.metadata == {"filename": "Q3%20report.pdf"}


def test_a_stream_that_fails_half_way_leaves_no_blob(azurite: AzuriteProcess) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (5 * MIB)  # one block staged
        raise ConnectionResetError("the caller went away")

    async def scenario() -> None:
        store = _store(azurite)
        try:
            with pytest.raises(ConnectionResetError):
                await store.attachments.put("broken-1", 0, "a.bin", broken())
        finally:
            await store.close()

    run(scenario())
    assert _blobs(azurite, "broken-1/") == {}


def test_deleting_a_mails_blobs_removes_each_and_a_missing_blob_has_no_size(azurite: AzuriteProcess) -> None:
    async def scenario() -> tuple[list[str], list[int | None]]:
        store = _store(azurite)
        try:
            blobs = [await store.attachments.put("gone-1", n, f"{n}.txt", b"data") for n in range(3)]
            mail = parse_mail(
                {**MAIL, "attachments": [{"name": f"{n}.txt", "blob": blob} for n, blob in enumerate(blobs)]}
            )
            await store.attachments.delete_for(mail)
            await store.attachments.delete(blobs[0])  # gone already: fine
            return blobs, [await store.attachments.size(blob) for blob in blobs]
        finally:
            await store.close()

    blobs, sizes = run(scenario())
    assert len(set(blobs)) == 3
    assert sizes == [None, None, None]
    assert _blobs(azurite, "gone-1/") == {}


def test_the_repository_takes_only_references_to_its_own_container(azurite: AzuriteProcess) -> None:
    async def scenario() -> None:
        store = _store(azurite)
        try:
            for reference in ("mail-payloads/x.json", "mail-attachments/../mail-payloads/x.json", "x"):
                with pytest.raises(ValueError, match="is not a blob of mail-attachments"):
                    await store.attachments.size(reference)
        finally:
            await store.close()

    run(scenario())


# -- blob references: what a queue producer hands over -------------------------------------------------------


def test_resolving_reads_each_blobs_size_whatever_the_mail_said(azurite: AzuriteProcess) -> None:
    async def scenario() -> list[int | None]:
        store = _store(azurite)
        try:
            blob = await store.attachments.put("producer-1", 0, "export.csv", b"a,b\n" * 1000)
            mail = parse_mail(
                {
                    **MAIL,
                    "attachments": [
                        {"name": "export.csv", "blob": blob, "size": 1},  # a wrong size is replaced
                        {"name": "note.txt", "contentBase64": "aGk="},
                    ],
                }
            )
            resolved = await resolve_attachments(store, mail)
            return [a.size for a in resolved.attachments]
        finally:
            await store.close()

    assert run(scenario()) == [4000, None]


def test_a_missing_empty_or_too_large_blob_is_an_invalid_message_saying_which(
    azurite: AzuriteProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.attachments

    monkeypatch.setattr(shared.attachments, "MAX_BLOB_ATTACHMENT_BYTES", 10)  # Graph's 150 MB, scaled down

    async def scenario() -> list[AppError]:
        store = _store(azurite)
        errors = []
        try:
            empty = await store.attachments.put("producer-2", 0, "empty.txt", b"")
            big = await store.attachments.put("producer-2", 1, "big.txt", b"x" * 11)
            for blob in ("mail-attachments/producer-2/never-uploaded", empty, big):
                mail = parse_mail(
                    {**MAIL, "attachments": [{"name": "ok.txt", "contentBase64": "aGk="}, {"name": "a", "blob": blob}]}
                )
                with pytest.raises(InvalidMessage) as raised:
                    await resolve_attachments(store, mail)
                errors.append(raised.value)
        finally:
            await store.close()
        return errors

    missing, empty, big = run(scenario())
    assert missing.message == (
        "attachment attachments[1].blob: no blob mail-attachments/producer-2/never-uploaded "
        "(never uploaded, or already deleted)"
    )
    assert empty.message.endswith("is empty")
    assert big.message.endswith("11 bytes; Graph takes attachments of at most 10")
    assert {e.code for e in (missing, empty, big)} == {"invalid_message"}


def test_a_mail_without_blobs_is_resolved_without_touching_storage() -> None:
    mail = parse_mail({**MAIL, "attachments": [{"name": "a.txt", "contentBase64": "aGk="}]})
    assert run(resolve_attachments(None, mail)) is mail  # type: ignore[arg-type]  # no store to call


def test_an_http_mail_may_reference_a_blob_and_is_queued_with_its_size(app: Any, azurite: AzuriteProcess) -> None:
    async def upload() -> str:
        store = _store(azurite)
        try:
            return await store.attachments.put("json-ref", 0, "r.pdf", b"%PDF" + b"0" * 5000)
        finally:
            await store.close()

    blob = run(upload())
    request = http("POST", "/api/mail", {**MAIL, "attachments": [{"name": "r.pdf", "blob": blob}]})
    response = run(user_function(app.post_mail)(request))
    assert response.status_code == 202, response.get_body()
    [queued] = _queued(azurite)
    assert queued["attachments"] == [
        {"name": "r.pdf", "contentType": "application/octet-stream", "blob": blob, "size": 5004, "inline": False}
    ]


# -- POST /api/mail as multipart/form-data -------------------------------------------------------------------


def test_a_40_mb_form_through_the_devhost_is_accepted_and_its_file_stored_complete(
    app_env: dict[str, str], azurite: AzuriteProcess, tmp_path: Path
) -> None:
    report = os.urandom(40 * MIB)
    body = form(
        mail_part({**MAIL, "id": "report-40mb", "attachments": [{"name": "note.txt", "contentBase64": "aGk="}]}),
        file_part("report.pdf", report),
        file_part("läuft.csv", b"a;b\n1;2\n", "text/csv; charset=utf-8"),
    )
    env = {
        **os.environ,
        **app_env,
        "MAIL_MAX_MESSAGE_BYTES": str(60 * MIB),  # 40 MiB are about 55 MB encoded
        "AzureWebJobs.mail_outbox.Disabled": "true",  # the queued message stays for the test to read
    }
    host = Devhost(ROOT, env, tmp_path / "devhost.log", "--settings", str(ROOT / "local.settings.json.example"))
    try:
        answer = httpx.post(f"{host.url}/api/mail", content=body, headers={"Content-Type": FORM_TYPE}, timeout=60)
    finally:
        host.stop()
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"id": "report-40mb", "status": "queued", "lane": "normal"}
    [queued] = _queued(azurite)  # 40 MB of blobs, a small message: no claim check needed
    inline, pdf, csv = queued["attachments"]
    assert inline == {
        "name": "note.txt",
        "contentType": "application/octet-stream",
        "contentBase64": "aGk=",
        "inline": False,
    }
    assert (pdf["name"], pdf["contentType"], pdf["size"]) == ("report.pdf", "application/pdf", 40 * MIB)
    assert pdf["sha256"] == hashlib.sha256(report).hexdigest()
    assert (csv["name"], csv["contentType"], csv["size"]) == ("läuft.csv", "text/csv; charset=utf-8", 8)
    stored = _blobs(azurite, "report-40mb/")
    assert set(stored) == {pdf["blob"], csv["blob"]}
    assert hashlib.sha256(stored[pdf["blob"]]).hexdigest() == pdf["sha256"]  # complete, byte for byte
    assert stored[csv["blob"]] == b"a;b\n1;2\n"


def test_the_same_form_again_is_a_replay_and_leaves_no_second_copy_of_its_files(
    app: Any, azurite: AzuriteProcess
) -> None:
    body = form(mail_part({**MAIL, "id": "weekly-7"}), file_part("week.pdf", b"%PDF week 7"))
    first = _post_form(app, body)
    again = _post_form(app, body)
    by_key = _post_form(
        app, form(mail_part(), file_part("week.pdf", b"%PDF week 7")), **{"Idempotency-Key": "weekly-7"}
    )
    assert first[:2] == again[:2] == by_key[:2] == (202, {"id": "weekly-7", "status": "queued", "lane": "normal"})
    assert "Idempotent-Replay" not in first[2]
    assert again[2]["Idempotent-Replay"] == by_key[2]["Idempotent-Replay"] == "true"
    [queued] = _queued(azurite)
    assert list(_blobs(azurite, "weekly-7/")) == [queued["attachments"][0]["blob"]]


def test_a_refused_form_leaves_none_of_its_files_behind(app: Any, azurite: AzuriteProcess) -> None:
    assert _post_form(app, form(mail_part({**MAIL, "id": "taken"}), file_part("a.pdf", b"first")))[0] == 202
    kept = set(_blobs(azurite))
    # 409: the id holds another mail (other file content)
    status, body, _ = _post_form(app, form(mail_part({**MAIL, "id": "taken"}), file_part("a.pdf", b"second")))
    assert (status, body["error"]["code"]) == (409, "conflict")
    # 400 after files were stored: the third one is empty
    status, body, _ = _post_form(
        app, form(mail_part(), file_part("1.pdf", b"one"), file_part("2.pdf", b"two"), file_part("3.pdf", b""))
    )
    assert (status, body["error"]["details"]) == (400, [{"field": "attachment[2]", "message": "empty file"}])
    assert set(_blobs(azurite)) == kept
    assert len(_queued(azurite)) == 1


def test_a_form_refused_because_storage_is_down_deletes_its_files(
    app_env: dict[str, str], azurite: AzuriteProcess
) -> None:
    """503: the mail could not be queued (the outbox repository fails, the blobs' does not)."""
    from azure.core.exceptions import ServiceRequestError

    class Unreachable:
        async def enqueue(self, *_: Any) -> Any:
            raise ServiceRequestError("the queue cannot be reached")

    async def scenario() -> Any:
        store = _store(azurite)
        store.outbox = Unreachable()  # type: ignore[assignment]
        from shared.api import answer

        request = ApiRequest(
            "POST",
            "/api/mail",
            {"content-type": FORM_TYPE},
            body=form(mail_part({**MAIL, "id": "outage-1"}), file_part("a.pdf", b"%PDF")),
        )
        try:
            return await answer(lambda r: post_mail(r, settings(), store), request)
        finally:
            await store.close()

    result = run(scenario())
    assert (result.status, result.body["error"]["code"]) == (503, "service_unavailable")
    assert _blobs(azurite, "outage-1/") == {}


def test_a_form_over_mail_max_message_bytes_is_413_naming_the_mails_size_and_the_limit(
    app: Any, azurite: AzuriteProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIL_MAX_MESSAGE_BYTES", str(MIB))
    settings.cache_clear()
    before = set(_blobs(azurite))
    # the files together pass the limit while they are read: the first is stored, the second never committed
    body = form(mail_part(), file_part("a.bin", b"a" * (MIB // 2)), file_part("b.bin", b"b" * MIB))
    status, answer, _ = _post_form(app, body)
    size = len(MAIL["text"]) + MIB // 2 + MIB
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    assert f"from {size} bytes of body and attachments; at most {MIB} are accepted" in answer["error"]["message"]
    assert "MAIL_MAX_MESSAGE_BYTES" in answer["error"]["message"]
    # a body that cannot hold a mail within the limit is refused before it is read
    status, answer, _ = _post_form(app, form(mail_part(), file_part("c.bin", b"c" * (7 * MIB))))
    assert status == 413 and "MAIL_MAX_MESSAGE_BYTES" in answer["error"]["message"]
    assert set(_blobs(azurite)) == before
    assert _queued(azurite) == []


def test_a_form_whose_file_fits_decoded_but_not_encoded_is_413_and_stores_nothing(
    app: Any, azurite: AzuriteProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exchange measures the encoded message: a file of 800,000 bytes is about 1.1 MB as base64 lines, over a
    1 MiB MAIL_MAX_MESSAGE_BYTES though its bytes are under it."""
    monkeypatch.setenv("MAIL_MAX_MESSAGE_BYTES", str(MIB))
    settings.cache_clear()
    before = set(_blobs(azurite))
    status, answer, _ = _post_form(app, form(mail_part(), file_part("a.bin", b"a" * 800_000)))
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    message = answer["error"]["message"]
    assert "as Exchange measures it" in message and f"from {800_000 + len(MAIL['text'])} bytes" in message
    assert set(_blobs(azurite)) == before and _queued(azurite) == []
    status, _, _ = _post_form(app, form(mail_part(), file_part("b.bin", b"b" * 700_000)))
    assert status == 202


def _files(count: int) -> list[bytes]:
    return [file_part(f"{n}.txt", b"x", "text/plain") for n in range(count)]


BAD_FORMS: list[tuple[str, bytes, str, int, str, str]] = [
    # (what, body, content type, status, error code, field named in the details)
    ("no boundary", form(mail_part()), "multipart/form-data", 400, "invalid_request", "Content-Type"),
    ("no parts at all", b"--" + BOUNDARY.encode() + b"--\r\n", FORM_TYPE, 400, "invalid_request", "mail"),
    ("no mail part", form(file_part("a.pdf", b"x")), FORM_TYPE, 400, "invalid_request", "mail"),
    ("mail part second", form(file_part("a.pdf", b"x"), mail_part()), FORM_TYPE, 400, "invalid_request", "mail"),
    ("two mail parts", form(mail_part(), mail_part()), FORM_TYPE, 400, "invalid_request", "mail"),
    (
        "mail part as text/plain",
        form(part("mail", b"{}", content_type="text/plain")),
        FORM_TYPE,
        415,
        "unsupported_media_type",
        "",
    ),
    (
        "mail part not json",
        form(part("mail", b"{nope", content_type="application/json")),
        FORM_TYPE,
        400,
        "invalid_json",
        "mail",
    ),
    (
        "mail part invalid",
        form(mail_part({"subject": "no one to send to", "text": "t"}), file_part("a.pdf", b"x")),
        FORM_TYPE,
        400,
        "invalid_request",
        "to",
    ),
    (
        "mail part over 5 MiB",
        form(part("mail", b" " * (5 * MIB + 1), content_type="application/json")),
        FORM_TYPE,
        413,
        "payload_too_large",
        "mail",
    ),
    ("unknown field part", form(mail_part(), part("note", b"hello")), FORM_TYPE, 400, "invalid_request", "note"),
    ("unknown file part", form(mail_part(), part("file", b"x", "a.pdf")), FORM_TYPE, 400, "invalid_request", "file"),
    (
        "attachment without filename",
        form(mail_part(), part("attachment", b"x")),
        FORM_TYPE,
        400,
        "invalid_request",
        "attachment[0]",
    ),
    ("empty filename", form(mail_part(), file_part("", b"x")), FORM_TYPE, 400, "invalid_request", "attachment[0]"),
    (
        "filename with a line break",
        form(mail_part(), part("attachment", b"x", "a\u2028b.pdf")),
        FORM_TYPE,
        400,
        "invalid_request",
        "attachment[0]",
    ),
    ("empty file", form(mail_part(), file_part("a.pdf", b"")), FORM_TYPE, 400, "invalid_request", "attachment[0]"),
    (
        "duplicate file names",
        form(mail_part(), file_part("a.pdf", b"1"), file_part("a.pdf", b"2")),
        FORM_TYPE,
        400,
        "invalid_request",
        "attachment[1]",
    ),
    (
        "a file named as an inline attachment",
        form(
            mail_part({**MAIL, "attachments": [{"name": "a.pdf", "contentBase64": "aGk="}]}), file_part("a.pdf", b"2")
        ),
        FORM_TYPE,
        400,
        "invalid_request",
        "attachment[0]",
    ),
    (
        "bad file content type",
        form(mail_part(), file_part("a.pdf", b"x", "pdf")),
        FORM_TYPE,
        400,
        "invalid_request",
        "attachment[0]",
    ),
    (
        "content type with a line break",
        form(mail_part(), file_part("a.pdf", b"x", "text/plain;\x0bx=1")),
        FORM_TYPE,
        400,
        "invalid_request",
        "attachment[0]",
    ),
    (
        "content type not ascii",
        form(mail_part(), file_part("a.pdf", b"x", 'text/plain; charset="\u0085"')),
        FORM_TYPE,
        400,
        "invalid_request",
        "attachment[0]",
    ),
    (
        "base64 transfer encoding",
        form(mail_part(), part("attachment", b"aGk=", "a.txt", "text/plain", Content_Transfer_Encoding="base64")),
        FORM_TYPE,
        400,
        "invalid_request",
        "attachment[0]",
    ),
    ("51 attachments", form(mail_part(), *_files(51)), FORM_TYPE, 400, "invalid_request", "attachment[50]"),
    (
        "50 files besides an inline one",
        form(mail_part({**MAIL, "attachments": [{"name": "i.txt", "contentBase64": "aGk="}]}), *_files(50)),
        FORM_TYPE,
        400,
        "invalid_request",
        "attachment[49]",
    ),
    ("cut off mid-part", form(mail_part(), file_part("a.pdf", b"x"))[:-30], FORM_TYPE, 400, "invalid_request", "body"),
    (
        "a part without Content-Disposition",
        b"--" + BOUNDARY.encode() + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n--" + BOUNDARY.encode() + b"--\r\n",
        FORM_TYPE,
        400,
        "invalid_request",
        "body",
    ),
]


def test_each_malformed_form_gets_a_clear_4xx_and_nothing_is_queued_or_stored(
    app: Any, azurite: AzuriteProcess
) -> None:
    before = set(_blobs(azurite))
    for what, body, content_type, status, code, field in BAD_FORMS:
        got, answer, _ = _post_form(app, body, content_type)
        assert got == status and answer["error"]["code"] == code, (what, answer)
        assert answer["error"]["message"], what
        if field:
            assert field in [d["field"] for d in answer["error"]["details"]], (what, answer["error"])
    assert _queued(azurite) == []
    assert set(_blobs(azurite)) == before


def test_fifty_files_are_fine(app: Any, azurite: AzuriteProcess) -> None:
    status, body, _ = _post_form(app, form(mail_part({**MAIL, "id": "fifty"}), *_files(50)))
    assert status == 202, body
    [queued] = _queued(azurite)
    assert [a["name"] for a in queued["attachments"]] == [f"{n}.txt" for n in range(50)]
