"""Attachment blobs (`mail-attachments`): the files producers hand over with a mail, kept until it is sent.

Every operation takes and returns a blob as an attachment names it, `mail-attachments/<name>` (`Attachment.blob`).
Files are written in blocks as they arrive, so a large one never sits in memory twice, and read back in ranges
(Graph's upload session takes at most 4 MB a chunk).

The files the app stores itself (a form's file parts) live in a folder of their mail, `forms/<mail id in hex>/`,
named by their part's index: that name is the record of which mail owns them. Only that mail may name them, and
only they are deleted once it is done with; a blob is created there once (a replay of the form finds it and
reuses it when its content is the same), and read back only as it was stored (size and SHA-256 checked).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..errors import AttachmentChanged
from ..mail import BLOB_REFERENCE, MailRequest
from .storage import ATTACHMENT_CONTAINER, Storage

if TYPE_CHECKING:
    from azure.storage.blob.aio import BlobClient

BLOCK_BYTES = 4 * 1024 * 1024  # one staged block; Storage takes up to 4,000 MiB, Graph reads 4 MB chunks
FORMS_FOLDER = f"{ATTACHMENT_CONTAINER}/forms/"  # the app's own files, one folder per mail
RangedReader = Callable[[int, int], Awaitable[bytes]]


def form_folder(mail_id: str) -> str:
    """The folder of the files the app stores for a mail (the id in hex: one folder per id, whatever it holds)."""
    return f"{FORMS_FOLDER}{mail_id.encode().hex()}/"


def owned_by(blob: str, mail_id: str) -> bool:
    """Whether the blob is one the app stored for this mail."""
    return blob.startswith(form_folder(mail_id))


@dataclass(frozen=True)
class StoredFile:
    """A file of a mail in Storage: its reference, size, SHA-256, and whether this call created it (False: the
    same content was there already, stored by an earlier or concurrent submission of the same mail)."""

    blob: str
    size: int
    sha256: str
    created: bool


class FileTaken(Exception):
    """The mail's file of that index exists with other content: the mail id is used by a different mail."""


class Attachments:
    """The blobs of `mail-attachments`, by reference."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def put(
        self,
        mail_id: str,
        index: int,
        name: str,
        content: bytes | AsyncIterable[bytes],
        *,
        content_type: str = "application/octet-stream",
    ) -> StoredFile:
        """Store the mail's file part `index` as `forms/<mail id hex>/<index>`, staging blocks as the content
        arrives and committing them at the end, only if that blob does not exist yet: until then no blob exists,
        so a stream that fails half-way leaves nothing behind (Storage drops uncommitted blocks), and replays of
        one form never make a second copy. When the blob exists with the same content, it is this file
        (`created` False); with other content, `FileTaken`."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.storage.blob import BlobBlock, ContentSettings

        blob = f"{form_folder(mail_id)}{index}"
        client = await self._client(blob)
        writer = uuid.uuid4().hex  # block ids of their own: concurrent replays stage into the same blob
        block_ids: list[str] = []
        digest, size = hashlib.sha256(), 0
        async for block in _blocks(content):
            block_id = f"{writer}-{len(block_ids):08d}"  # every id of a blob must have the same length
            await client.stage_block(block_id, block, length=len(block))
            block_ids.append(block_id)
            digest.update(block)
            size += len(block)
        sha256 = digest.hexdigest()
        settings = ContentSettings(content_type=content_type)
        metadata = {"filename": quote(name, safe=""), "sha256": sha256}  # metadata is ASCII; names may not be
        for _ in range(2):  # a second time when the blob in the way was deleted meanwhile (its mail was done)
            try:
                await client.commit_block_list(
                    [BlobBlock(block_id) for block_id in block_ids],
                    content_settings=settings,
                    metadata=metadata,
                    match_condition=MatchConditions.IfMissing,
                )
                return StoredFile(blob, size, sha256, created=True)
            except (ResourceExistsError, ResourceModifiedError):
                try:
                    existing = await client.get_blob_properties()
                except ResourceNotFoundError:
                    continue
                if existing.metadata.get("sha256") != sha256 or int(existing.size) != size:
                    raise FileTaken(blob) from None
                return StoredFile(blob, size, sha256, created=False)
        raise FileTaken(blob)

    async def size(self, blob: str) -> int | None:
        """The blob's size in bytes; None when there is no such blob."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            properties = await (await self._client(blob)).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return int(properties.size)

    def reader(self, blob: str, size: int, sha256: str | None = None) -> RangedReader:
        """A ranged read of the blob: `read(start, length)` answers those bytes (fewer at its end), each read of
        the blob as first seen (its ETag), which must have `size` bytes and, when given, the SHA-256 taken at
        intake: `AttachmentChanged` otherwise, raised before the read that completes the file is answered, so
        a changed file is never sent whole. Reads may start anywhere (an upload resumed): bytes before the
        first read are hashed on the way."""
        check = _ContentCheck(blob, size, sha256)

        async def read(start: int, length: int) -> bytes:
            client = await self._client(blob)
            if check.etag is None:
                await check.first_look(client)
            while sha256 is not None and check.hashed < start:  # the part before this read, not yet hashed
                gap = min(BLOCK_BYTES, start - check.hashed)
                check.add(check.hashed, await check.download(client, check.hashed, gap))
            data = await check.download(client, start, length)
            check.add(start, data)
            return data

        return read

    async def delete(self, blob: str) -> None:
        """Delete the blob; gone is fine."""
        container, _, name = _split(blob)
        await self._storage.delete_blob(container, name)

    async def delete_for(self, mail: MailRequest) -> None:
        """Delete the blobs the app stored for this mail (a producer's own blobs are the producer's)."""
        assert mail.id is not None
        owned = [a.blob for a in mail.attachments if a.blob is not None and owned_by(a.blob, mail.id)]
        await asyncio.gather(*(self.delete(blob) for blob in owned))

    async def _client(self, blob: str) -> BlobClient:
        container, _, name = _split(blob)
        return await self._storage.blob(container, name)


class _ContentCheck:
    """What one reader has seen of a blob: the ETag every read is pinned to, and the hash of its bytes so far."""

    def __init__(self, blob: str, size: int, sha256: str | None) -> None:
        self.blob, self.size, self.sha256 = blob, size, sha256
        self.etag: str | None = None
        self.hashed = 0
        self._digest = hashlib.sha256()

    def changed(self, what: str) -> AttachmentChanged:
        return AttachmentChanged(f"The attachment {self.blob} changed after the mail was accepted: {what}.")

    async def first_look(self, client: BlobClient) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            properties = await client.get_blob_properties()
        except ResourceNotFoundError:
            raise self.changed("it is gone") from None
        if int(properties.size) != self.size:
            raise self.changed(f"{properties.size} bytes, {self.size} were accepted")
        self.etag = properties.etag

    async def download(self, client: BlobClient, start: int, length: int) -> bytes:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            downloader = await client.download_blob(
                offset=start, length=length, etag=self.etag, match_condition=MatchConditions.IfNotModified
            )
            return bytes(await downloader.readall())
        except (ResourceModifiedError, ResourceNotFoundError):
            raise self.changed("it was written or deleted while it was read") from None

    def add(self, start: int, data: bytes) -> None:
        """Hash the bytes of `data` past what is hashed already; at the end, compare with the accepted hash."""
        if self.sha256 is None or start + len(data) <= self.hashed:
            return
        self._digest.update(data[self.hashed - start :])
        self.hashed = start + len(data)
        if self.hashed >= self.size and self._digest.hexdigest() != self.sha256:
            raise self.changed("its SHA-256 differs from the one taken when it was accepted")


def _split(blob: str) -> tuple[str, str, str]:
    """A reference as (container, "/", name), refusing anything that is not one of our container's blobs."""
    if not BLOB_REFERENCE.match(blob):
        raise ValueError(f"{blob[:120]!r} is not a blob of {ATTACHMENT_CONTAINER}")
    return blob.partition("/")


async def _blocks(content: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The content in blocks of BLOCK_BYTES (the last one shorter), holding at most one block besides it."""
    if isinstance(content, bytes):
        view = memoryview(content)
        for start in range(0, len(view), BLOCK_BYTES):
            yield bytes(view[start : start + BLOCK_BYTES])
        return
    pending = bytearray()
    async for chunk in content:
        pending += chunk
        while len(pending) >= BLOCK_BYTES:
            yield bytes(pending[:BLOCK_BYTES])
            del pending[:BLOCK_BYTES]
    if pending:
        yield bytes(pending)
