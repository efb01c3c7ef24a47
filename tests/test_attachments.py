"""Attachments handed over by producers (issue 16, point 2's intake): the `mail-attachments` blobs, blob
references resolved for the sender, and `POST /api/mail` as `multipart/form-data`, on Azurite."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from devhost.azurite import AzuriteProcess
from sandbox.launcher import SandboxProcess
from shared.api import ApiRequest, post_mail
from shared.attachments import resolve_attachments
from shared.config import StorageAccount, settings
from shared.errors import AppError, AttachmentChanged, InvalidMessage
from shared.mail import parse_mail
from shared.store import Store
from shared.store.attachments import form_folder

from .helpers import ROOT, SENDER, Devhost, audit_rows, drain_queue, http, run, user_function

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


_NOT_YOURS = "not a blob this mail may name (the files of its own form, or a folder configured for its way in)"


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


def _folder(mail_id: str) -> str:
    """The folder (under the container) of the files the app stores for a mail."""
    return form_folder(mail_id).removeprefix("mail-attachments/")


def _upload(azurite: AzuriteProcess, name: str, content: bytes) -> str:
    """A producer's own blob, uploaded as `az storage blob upload` would; its reference."""
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = service.get_container_client("mail-attachments")
        if not container.exists():
            container.create_container()
        container.upload_blob(name, content, overwrite=True)
    return f"mail-attachments/{name}"


# -- the store's attachment blobs --------------------------------------------------------------------------


def test_a_file_is_stored_in_4_mib_blocks_and_read_back_in_ranges(azurite: AzuriteProcess) -> None:
    content = os.urandom(9 * MIB + 123)

    async def pieces() -> AsyncIterator[bytes]:  # odd sizes, as a multipart parser hands them over
        for start in range(0, len(content), 1_000_003):
            yield content[start : start + 1_000_003]

    async def scenario() -> tuple[str, str, int | None, bytes, bytes, int | None]:
        store = _store(azurite)
        try:
            stored = await store.attachments.put(
                "report-1", 0, "Q3 report.pdf", pieces(), content_type="application/pdf"
            )
            streamed, given = stored.blob, (await store.attachments.put("report..1", 1, "small.txt", b"hello")).blob
            assert stored.created and stored.sha256 == hashlib.sha256(content).hexdigest()
            read = store.attachments.reader(streamed, len(content))
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
    assert streamed == f"mail-attachments/forms/{b'report-1'.hex()}/0"
    assert given == f"mail-attachments/forms/{b'report..1'.hex()}/1"  # one folder per id, no `..` in it
    assert size == len(content) and small == 5
    assert middle == content[4 * MIB - 10 : 4 * MIB + 10] and tail == content[-5:]
    assert _blobs(azurite, streamed.removeprefix("mail-attachments/"))[streamed] == content
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        blob = service.get_blob_client("mail-attachments", streamed.removeprefix("mail-attachments/"))
        committed, _ = blob.get_block_list("committed")
        properties = blob.get_blob_properties()
    assert [b.size for b in committed] == [4 * MIB, 4 * MIB, MIB + 123]
    assert properties.content_settings.content_type == "application/pdf"
    assert properties.metadata == {"filename": "Q3%20report.pdf", "sha256": hashlib.sha256(content).hexdigest()}


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
    assert _blobs(azurite, _folder("broken-1")) == {}


def test_the_sender_deletes_the_blobs_the_app_stored_for_the_mail_and_no_producers(azurite: AzuriteProcess) -> None:
    producers = _upload(azurite, "exports/gone-1/orders.csv", b"a,b")

    async def scenario() -> tuple[list[str], list[int | None]]:
        store = _store(azurite)
        try:
            blobs = [(await store.attachments.put("gone-1", n, f"{n}.txt", b"data")).blob for n in range(3)]
            attachments = [{"name": f"{n}.txt", "blob": blob} for n, blob in enumerate(blobs)]
            mail = parse_mail({**MAIL, "id": "gone-1", "attachments": [*attachments, {"name": "o", "blob": producers}]})
            await store.attachments.delete_for(mail)
            await store.attachments.delete(blobs[0])  # gone already: fine
            return blobs, [await store.attachments.size(blob) for blob in [*blobs, producers]]
        finally:
            await store.close()

    blobs, sizes = run(scenario())
    assert len(set(blobs)) == 3
    assert sizes == [None, None, None, 3]
    assert _blobs(azurite, _folder("gone-1")) == {}


def test_a_blob_is_read_back_only_as_it_was_stored(azurite: AzuriteProcess) -> None:
    """A resumed read hashes what came before it; a write between two reads, or other bytes of the same size,
    raise `attachment_changed` before the read that completes the file is answered."""
    content = os.urandom(9 * MIB)

    async def scenario() -> list[str]:
        store = _store(azurite)
        outcomes = []
        try:
            stored = await store.attachments.put("as-stored", 0, "a.bin", content)
            resumed = store.attachments.reader(stored.blob, stored.size, stored.sha256)
            assert await resumed(8 * MIB, MIB) == content[8 * MIB :]  # the first 8 MiB hashed on the way
            read = store.attachments.reader(stored.blob, stored.size, stored.sha256)
            await read(0, 4 * MIB)
            _upload(azurite, stored.blob.removeprefix("mail-attachments/"), content)  # same bytes, a new ETag
            for reader in (read, store.attachments.reader(stored.blob, stored.size, "0" * 64)):
                try:
                    await reader(4 * MIB, 5 * MIB)
                    outcomes.append("read")
                except AttachmentChanged as error:
                    outcomes.append(error.message)
        finally:
            await store.close()
        return outcomes

    written, other_hash = run(scenario())
    assert written.endswith("it was written or deleted while it was read.")
    assert other_hash.endswith("its SHA-256 differs from the one taken when it was accepted.")


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
            blob = _upload(azurite, "exports/producer-1/export.csv", b"a,b\n" * 1000)
            mail = parse_mail(
                {
                    **MAIL,
                    "id": "producer-1",
                    "attachments": [
                        {"name": "export.csv", "blob": blob, "size": 1},  # a wrong size is replaced
                        {"name": "note.txt", "contentBase64": "aGk="},
                    ],
                }
            )
            resolved = await resolve_attachments(store, mail, ("mail-attachments/exports/",))
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
            empty = _upload(azurite, "producer-2/empty.txt", b"")
            big = _upload(azurite, "producer-2/big.txt", b"x" * 11)
            for blob in ("mail-attachments/producer-2/never-uploaded", empty, big):
                attachments = [{"name": "ok.txt", "contentBase64": "aGk="}, {"name": "a", "blob": blob}]
                mail = parse_mail({**MAIL, "id": "p-2", "attachments": attachments})
                with pytest.raises(InvalidMessage) as raised:
                    await resolve_attachments(store, mail, ("mail-attachments/producer-2/",))
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
    assert run(resolve_attachments(None, mail, ())) is mail  # type: ignore[arg-type]  # no store to call


def test_a_blob_outside_the_mails_own_files_and_its_folders_is_refused_alike_whether_it_exists_or_not(
    azurite: AzuriteProcess,
) -> None:
    """A caller cannot tell from the answer which names exist: the refusal comes before Storage is asked."""
    exists = _upload(azurite, "exports/2026-11-24/orders.csv", b"id;total\n1;20\n")

    async def scenario() -> list[AppError]:
        store = _store(azurite)
        stored = (await store.attachments.put("someone-elses", 0, "secret.pdf", b"%PDF secret")).blob
        errors = []
        try:
            for blob in (exists, "mail-attachments/exports/2026-11-24/missing.csv", stored, stored + "9"):
                mail = parse_mail({**MAIL, "id": "mine-1", "attachments": [{"name": "a", "blob": blob}]})
                with pytest.raises(InvalidMessage) as raised:
                    await resolve_attachments(store, mail, ("mail-attachments/reports/",))
                errors.append(raised.value)
        finally:
            await store.close()
        return errors

    bodies = [e.body() for e in run(scenario())]
    assert bodies[0] == bodies[1] and bodies[2] == bodies[3] and bodies[0] == bodies[2]
    assert bodies[0]["error"]["details"] == [
        {
            "field": "attachments[0].blob",
            "message": "not a blob this mail may name (the files of its own form, or a folder configured for its "
            "way in)",
        }
    ]


def test_an_http_mail_cannot_have_another_producers_blob_mailed_to_itself(app: Any, azurite: AzuriteProcess) -> None:
    """The attack: a caller with only the mail key names a producer's blob; 400 whether it exists or not, and
    the blob stays."""
    blob = _upload(azurite, "exports/2026-11-25/orders.csv", b"id;total\n1;20\n")
    answers = []
    for name in (blob, "mail-attachments/exports/2026-11-25/other.csv"):
        request = http("POST", "/api/mail", {**MAIL, "attachments": [{"name": "orders.csv", "blob": name}]})
        response = run(user_function(app.post_mail)(request))
        answers.append((response.status_code, json.loads(response.get_body())))
    assert answers[0] == answers[1]
    assert answers[0][0] == 400 and answers[0][1]["error"]["details"][0]["field"] == "attachments[0].blob"
    # nor by a form's mail part
    mail = {**MAIL, "attachments": [{"name": "orders.csv", "blob": blob}]}
    status, body, _ = _post_form(app, form(mail_part(mail), file_part("a.pdf", b"%PDF")))
    assert (status, body["error"]["details"][0]["field"]) == (400, "attachments[0].blob")
    assert _queued(azurite) == []
    assert blob in _blobs(azurite, "exports/2026-11-25/")


def test_an_http_mail_cannot_name_the_apps_form_files_not_even_under_its_own_id(
    app: Any, azurite: AzuriteProcess
) -> None:
    """The app's files come only from a form's file parts: a JSON body naming `forms/<its own id>/...` gets the
    same 400 as any other name, whether the file exists (a form sent earlier under that id) or not, never a 500."""
    first = _post_form(app, form(mail_part({**MAIL, "id": "weekly-9"}), file_part("w.pdf", b"%PDF week 9")))
    assert first[0] == 202
    [stored] = _queued(azurite)[0]["attachments"]
    answers = []
    for mail_id, blob in (("weekly-9", stored["blob"]), ("Fresh-1", f"{form_folder('fresh-1')}0")):
        reference = {"name": "w.pdf", "blob": blob, "size": stored["size"], "sha256": stored["sha256"]}
        request = http("POST", "/api/mail", {**MAIL, "id": mail_id, "attachments": [reference]})
        response = run(user_function(app.post_mail)(request))
        answers.append((response.status_code, json.loads(response.get_body())["error"]))
    refused = [{"field": "attachments[0].blob", "message": _NOT_YOURS}]
    assert [(status, error["code"], error["details"]) for status, error in answers] == 2 * [
        (400, "invalid_request", refused)
    ]
    assert len(_queued(azurite)) == 1


def test_an_http_mail_may_name_blobs_under_the_folders_configured_for_the_api(
    app: Any, azurite: AzuriteProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIL_API_BLOB_PREFIXES", "shared-reports/")
    settings.cache_clear()
    blob = _upload(azurite, "shared-reports/r.pdf", b"%PDF" + b"0" * 5000)
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
    stored = _blobs(azurite, _folder("report-40mb"))
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
    assert list(_blobs(azurite, _folder("weekly-7"))) == [queued["attachments"][0]["blob"]]


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
    assert _blobs(azurite, _folder("outage-1")) == {}


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
    (
        "17 header lines in a part",
        form(mail_part(), part("attachment", b"x", "a.pdf", **{f"X_Note_{n}": "y" for n in range(16)})),
        FORM_TYPE,
        413,
        "form_headers_too_large",
        "body",
    ),
    (
        "a part header over 8 KiB",
        form(mail_part(), part("attachment", b"x", "a.pdf", X_Note="y" * 8200)),
        FORM_TYPE,
        413,
        "form_headers_too_large",
        "body",
    ),
    (
        "over 64 KiB of part headers in all",
        form(mail_part(), *(part("attachment", b"x", f"{n}.pdf", X_Note="y" * 7000) for n in range(10))),
        FORM_TYPE,
        413,
        "form_headers_too_large",
        "body",
    ),
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


def test_a_form_with_38_mb_of_part_header_lines_is_refused_at_once_without_holding_up_the_event_loop(
    app_env: dict[str, str], azurite: AzuriteProcess
) -> None:
    """The loop stays free: a ticker beside the request never waits long (the whole header once took 1.4-1.9 s
    of parsing in one go), and a status request made meanwhile is answered."""
    from shared.api import answer, get_mail

    lines = b"X-Note: " + b"y" * 70 + b"\r\n"
    headers = b'Content-Disposition: form-data; name="attachment"; filename="a.pdf"\r\n' + lines * (38 * MIB // 80)
    body = form(mail_part(), headers + b"\r\n%PDF")
    gaps: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def scenario() -> tuple[Any, Any, float]:
        store = _store(azurite)
        stop = asyncio.Event()
        ticking = asyncio.create_task(ticker(stop))
        await asyncio.sleep(0.01)
        try:
            started = time.perf_counter()
            request = ApiRequest("POST", "/api/mail", {"content-type": FORM_TYPE}, body=body)
            status_request = ApiRequest("GET", "/api/mail/x", {}, route={"id": "no-such-mail"})
            refused, meanwhile = await asyncio.gather(
                answer(lambda r: post_mail(r, settings(), store), request),
                answer(lambda r: get_mail(r, store), status_request),
            )
            return refused, meanwhile, time.perf_counter() - started
        finally:
            stop.set()
            await ticking
            await store.close()

    refused, meanwhile, took = run(scenario())
    assert (refused.status, refused.body["error"]["code"]) == (413, "form_headers_too_large")
    assert meanwhile.status == 404
    assert took < 5, took  # refused within the first part header's 8 KiB, not after reading 38 MB
    assert max(gaps) < 0.25, f"the event loop was held {max(gaps):.3f} s"


def test_concurrent_replays_of_one_form_store_its_files_once_and_leave_no_blob_behind(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight submissions of one form at once (a client retrying through timeouts): one mail, sent once, and once
    it and the spare queue copies are done with, no attachment blob and no claim-check blob of it is left."""
    monkeypatch.setenv("MAIL_SEND_LEASE_SECONDS", "5")  # spare copies met while it is sending come back soon
    settings.cache_clear()
    mail = {**MAIL, "id": "replayed-9", "text": "x" * 60_000}  # its queue message goes by claim check
    body = form(mail_part(mail), file_part("a.pdf", b"%PDF " + os.urandom(3000)), file_part("b.csv", b"1;2\n", None))

    async def post() -> tuple[int, Any]:
        request = http("POST", "/api/mail", raw=body, headers={"Content-Type": FORM_TYPE})
        response = await user_function(app.post_mail)(request)
        return response.status_code, json.loads(response.get_body())

    async def scenario() -> list[tuple[int, Any]]:
        answers = await asyncio.gather(*(post() for _ in range(8)))
        assert len(_blobs(azurite, _folder("replayed-9"))) == 2  # stored once, whoever stored them
        outbox = QueueClient.from_connection_string(azurite.connection_string, "mail-outbox")
        deadline = time.monotonic() + 30
        while outbox.get_queue_properties().approximate_message_count and time.monotonic() < deadline:
            await drain_queue(azurite.connection_string, "mail-outbox", app.mail_outbox)
            await asyncio.sleep(0.5)  # spare copies handed back with a delay
        outbox.close()
        return list(answers)

    answers = run(scenario())
    assert {(status, body["id"]) for status, body in answers} == {(202, "replayed-9")}
    assert [m["subject"] for m in sandbox.mailbox("alice@contoso.test") if m["subject"] == MAIL["subject"]] == [
        MAIL["subject"]
    ]
    assert _blobs(azurite, _folder("replayed-9")) == {}
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        payloads = service.get_container_client("mail-payloads")
        assert [b.name for b in payloads.list_blobs(name_starts_with="replayed-9")] == []


def test_a_queue_message_names_only_blobs_under_its_configured_folders_and_the_producer_keeps_them(
    app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIL_QUEUE_BLOB_PREFIXES", "exports/")
    settings.cache_clear()
    ours = _upload(azurite, "exports/2026-11-26/orders.csv", b"id;total\n1;20\n")
    theirs = _upload(azurite, "finance/2026-11-26/salaries.csv", b"name;salary\n")
    producer = QueueClient.from_connection_string(
        azurite.connection_string, "mail-outbox", message_encode_policy=TextBase64EncodePolicy()
    )
    checked = {"sha256": hashlib.sha256(b"id;total\n1;20\n").hexdigest()}
    for mail_id, blob, more in (
        ("export-26", ours, checked),
        ("grab-26", theirs, {}),
        ("export-26-changed", ours, {"sha256": "0" * 64}),  # the producer's hash is checked as it is read
    ):
        attachment = {"name": "orders.csv", "contentType": "text/csv", "blob": blob, **more}
        producer.send_message(json.dumps({**MAIL, "id": mail_id, "attachments": [attachment]}))
    producer.close()

    async def scenario() -> list[Any]:
        await drain_queue(azurite.connection_string, "mail-outbox", app.mail_outbox)
        store = _store(azurite)
        try:
            return [await store.statuses.get(i) for i in ("export-26", "grab-26", "export-26-changed")]
        finally:
            await store.close()

    sent, refused, changed = run(scenario())
    assert sent.status == "sent"
    assert (changed.status, changed.error_code) == ("failed", "attachment_changed")
    assert (refused.status, refused.error_code) == ("failed", "invalid_message")
    assert "not a blob this mail may name" in refused.error_message
    assert set(_blobs(azurite, "exports/2026-11-26/")) == {ours}  # a producer's blob is the producer's
    assert set(_blobs(azurite, "finance/2026-11-26/")) == {theirs}


@pytest.mark.parametrize(
    ("what", "overwrite"),
    [("same size", lambda content: bytes(reversed(content))), ("other size", lambda content: content + b"!")],
)
def test_a_file_overwritten_while_its_mail_waits_fails_the_mail_attachment_changed_and_nothing_is_sent(
    app: Any,
    azurite: AzuriteProcess,
    sandbox: SandboxProcess,
    caplog: pytest.LogCaptureFixture,
    what: str,
    overwrite: Any,
) -> None:
    mail_id = f"changed-{what.replace(' ', '-')}"
    content = b"%PDF " + os.urandom(4000)
    status, body, _ = _post_form(app, form(mail_part({**MAIL, "id": mail_id}), file_part("a.pdf", content)))
    assert status == 202, body
    [queued] = _queued(azurite)
    _upload(azurite, queued["attachments"][0]["blob"].removeprefix("mail-attachments/"), overwrite(content))

    async def scenario() -> Any:
        await drain_queue(azurite.connection_string, "mail-outbox", app.mail_outbox)
        store = _store(azurite)
        try:
            return await store.statuses.get(mail_id)
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, "notifier.outbox"):
        row = run(scenario())
    assert (row.status, row.error_code) == ("failed", "attachment_changed")
    assert "changed after the mail was accepted" in row.error_message
    assert [m for m in sandbox.mailbox("alice@contoso.test") if m["subject"] == MAIL["subject"]] == []
    assert [m for m in sandbox.mailbox(SENDER, "drafts")] == []  # a draft begun for it is discarded
    audit = [r for r in audit_rows(azurite.connection_string) if r["correlationId"] == mail_id]
    assert [(r["outcome"], r["detail"].split(":")[0]) for r in audit] == [("failed", "attachment_changed")]
    assert any(mail_id in r.getMessage() and "changed" in r.getMessage() for r in caplog.records)
