"""The outbox queue (`mail-outbox`) and its claim check: a mail too big for a queue message travels as a
blob of its own in `mail-payloads`, the message naming it."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidMessage
from ..text import json_too_deep
from .storage import CLAIM_CONTAINER, OUTBOX, Storage

QUEUE_PAYLOAD_LIMIT = 48 * 1024  # 64 KB per queue message once base64-encoded


@dataclass(frozen=True)
class Enqueued:
    """A message `OutboxQueue.enqueue` sent: enough to delete it again."""

    message_id: str
    pop_receipt: str | None
    claim: dict[str, Any] | None = None


class OutboxQueue:
    """Messages on `mail-outbox`, and the claim-check blobs of the big ones."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def enqueue(self, mail_id: str, payload: dict[str, Any]) -> Enqueued:
        """Put a mail on the outbox; a payload too big for a queue message goes through a blob of its own
        (never shared by two submissions of one id). The answer can withdraw the message again."""
        await self._storage.ensure_queues()
        text = json.dumps(payload, separators=(",", ":"))
        claim: dict[str, Any] | None = None
        if len(text.encode()) > QUEUE_PAYLOAD_LIMIT:
            blob = f"{mail_id}-{uuid.uuid4().hex[:12]}.json"
            await (await self._storage.blob(CLAIM_CONTAINER, blob)).upload_blob(text.encode(), overwrite=False)
            claim = {"id": mail_id, "claimCheck": f"{CLAIM_CONTAINER}/{blob}"}
            text = json.dumps(claim)
        sent = await self._storage.queue(OUTBOX).send_message(text)
        return Enqueued(sent.id, sent.pop_receipt, claim)

    async def withdraw(self, enqueued: Enqueued) -> None:
        """Take back a message `enqueue` sent (a submission that turned out to be refused). A sender that
        received it meanwhile holds a new pop receipt: then the message, and its claim-check blob, stay for the
        sender, which sees that their content does not match the status row of the id and drops both without a
        Graph call (deleting the blob under it would make the copy look broken and fail the mail that owns
        the id)."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            await self._storage.queue(OUTBOX).delete_message(enqueued.message_id, enqueued.pop_receipt)
        except ResourceNotFoundError:
            pass
        except HttpResponseError as error:
            if getattr(error, "error_code", None) != "PopReceiptMismatch":
                raise
            return
        if enqueued.claim is not None:
            await self.delete_payload(enqueued.claim)

    async def send_again(self, text: str, delay_seconds: float) -> None:
        """Hand a message back to the outbox, visible after a delay (a throttled mail's `Retry-After`)."""
        await self._storage.send_message(OUTBOX, text, delay_seconds)

    async def poison(self, text: str) -> None:
        """Move a message that can never be sent to `mail-outbox-poison`."""
        await self._storage.poison(OUTBOX, text)

    async def resolve_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The mail of an outbox message: itself, or the blob its claim check names."""
        claim = payload.get("claimCheck")
        if claim is None:
            return payload
        container, _, blob = str(claim).partition("/")
        if container != CLAIM_CONTAINER or not blob or "/" in blob:
            raise InvalidMessage(f"claimCheck {str(claim)[:120]!r} does not name a mail payload")
        content = await self._storage.get_bytes(container, blob)
        if content is None:
            raise InvalidMessage(f"claimCheck {claim!r}: no such blob (deleted, or never written)")
        text = content.decode("utf-8", "replace")
        try:
            mail = None if json_too_deep(text) else json.loads(text)
        except ValueError:
            raise InvalidMessage(f"claimCheck {claim!r}: the blob is not a JSON mail") from None
        if not isinstance(mail, dict):
            raise InvalidMessage(f"claimCheck {claim!r}: the blob is not a JSON mail")
        return mail

    async def delete_payload(self, payload: dict[str, Any]) -> None:
        """Delete the claim-check blob of a message, if it has one."""
        claim = payload.get("claimCheck")
        if claim:
            container, _, blob = str(claim).partition("/")
            await self._storage.delete_blob(container, blob)
