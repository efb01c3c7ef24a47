"""Attachment blobs (`mail-attachments`): the files producers hand over with a mail, kept until it is sent.

Every operation takes and returns a blob as an attachment names it, `mail-attachments/<name>` (`Attachment.blob`).
Files are written in blocks as they arrive, so a large one never sits in memory twice, and read back in ranges
(Graph's upload session takes at most 4 MB a chunk).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..mail import BLOB_REFERENCE, MailRequest
from .storage import ATTACHMENT_CONTAINER, Storage

if TYPE_CHECKING:
    from azure.storage.blob.aio import BlobClient

BLOCK_BYTES = 4 * 1024 * 1024  # one staged block; Storage takes up to 4,000 MiB, Graph reads 4 MB chunks
RangedReader = Callable[[int, int], Awaitable[bytes]]


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
    ) -> str:
        """Store one attachment of a mail under a name no other submission uses (`<mail id>/<uuid>-<index>`),
        staging blocks as the content arrives and committing them at the end: until then no blob exists, so a
        stream that fails half-way leaves nothing behind (Storage drops uncommitted blocks). Its reference."""
        folder = re.sub(r"\.{2,}", ".", mail_id)  # an id may hold `..`, a reference may not
        blob_name = f"{folder}/{uuid.uuid4().hex}-{index}"
        client = await self._storage.blob(ATTACHMENT_CONTAINER, blob_name)
        block_ids: list[str] = []
        async for block in _blocks(content):
            block_id = f"{len(block_ids):08d}"  # every id of a blob must have the same length
            await client.stage_block(block_id, block, length=len(block))
            block_ids.append(block_id)
        from azure.storage.blob import BlobBlock, ContentSettings

        await client.commit_block_list(
            [BlobBlock(block_id) for block_id in block_ids],
            content_settings=ContentSettings(content_type=content_type),
            metadata={"filename": quote(name, safe="")},  # metadata is ASCII; the name may not be
        )
        return f"{ATTACHMENT_CONTAINER}/{blob_name}"

    async def size(self, blob: str) -> int | None:
        """The blob's size in bytes; None when there is no such blob."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            properties = await (await self._client(blob)).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return int(properties.size)

    def reader(self, blob: str) -> RangedReader:
        """A ranged read of the blob: `read(start, length)` answers those bytes (fewer at its end)."""

        async def read(start: int, length: int) -> bytes:
            client = await self._client(blob)
            downloader = await client.download_blob(offset=start, length=length)
            return bytes(await downloader.readall())

        return read

    async def delete(self, blob: str) -> None:
        """Delete the blob; gone is fine."""
        container, _, name = _split(blob)
        await self._storage.delete_blob(container, name)

    async def delete_for(self, mail: MailRequest) -> None:
        """Delete every blob the mail's attachments name."""
        await asyncio.gather(*(self.delete(a.blob) for a in mail.attachments if a.blob is not None))

    async def _client(self, blob: str) -> BlobClient:
        container, _, name = _split(blob)
        return await self._storage.blob(container, name)


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
