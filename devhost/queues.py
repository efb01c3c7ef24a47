"""Queue triggers with the Functions host's semantics, on Azure Storage queues (Azurite locally).

Per poll: receive up to `batch_size` messages (base64, as the host encodes them), run the function on each
concurrently, delete the message on success; on failure make it visible again after `visibility_timeout`,
or, once its dequeue count reached `max_dequeue_count`, move it to `<queue>-poison`. A message that is not
valid base64 never reaches the function: it alone goes to `<queue>-poison` at once, verbatim, as the host's
queue extension does. Delivery is at-least-once, and several runners on one queue compete for messages as
Function App instances do.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import azure.functions as func
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azure.storage.queue.aio import QueueClient

log = logging.getLogger("devhost.queues")

QueueFunction = Callable[[func.QueueMessage], Awaitable[Any]]
T = TypeVar("T")


@dataclass
class QueueSettings:
    """host.json `extensions.queues` (the values the real host defaults to)."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 2.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    lock_seconds: float = 600  # a received message stays invisible this long, renewed while its function runs

    @classmethod
    def from_host_json(cls, host: dict[str, Any], lock_seconds: float = 600) -> QueueSettings:
        queues = host.get("extensions", {}).get("queues", {})
        encoding = str(queues.get("messageEncoding", "base64")).lower()
        if encoding != "base64":
            raise ValueError("the devhost supports messageEncoding base64 only, as the app uses")
        return cls(
            batch_size=int(queues.get("batchSize", 16)),
            new_batch_threshold=int(queues.get("newBatchThreshold", int(queues.get("batchSize", 16)) // 2)),
            max_polling_interval=_seconds(queues.get("maxPollingInterval", "00:00:02")),
            visibility_timeout=_seconds(queues.get("visibilityTimeout", "00:00:00")),
            max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            lock_seconds=lock_seconds,
        )


@dataclass
class Invocation:
    message_id: str
    dequeue_count: int
    ok: bool
    seconds: float
    error: str = ""


@dataclass
class QueueTrigger:
    """One queue-triggered function polled on one queue."""

    connection_string: str
    queue_name: str
    function: QueueFunction
    settings: QueueSettings = field(default_factory=QueueSettings)
    invocations: list[Invocation] = field(default_factory=list)

    def _client(self, name: str) -> QueueClient:
        """Messages as stored, undecoded: each is decoded on its own, so one bad message cannot fail a batch
        (the SDK's decode policy raises for the whole receive), and a poisoned copy is the original text."""
        return QueueClient.from_connection_string(
            self.connection_string,
            name,
            use_env_settings=False,  # no proxy lookup (in a thread) on every poll and delete
        )

    async def _receive(self, queue: QueueClient) -> list[Any]:
        """Up to a batch of messages, locked for `lock_seconds`."""
        return [
            m
            async for m in queue.receive_messages(
                messages_per_page=self.settings.batch_size,
                max_messages=self.settings.batch_size,
                visibility_timeout=int(self.settings.lock_seconds),
            )
        ]

    async def _unless_stopped(self, stop: asyncio.Event, work: Awaitable[T], default: T) -> T:
        """`work`, abandoned (giving `default`) when stop is asked for: the SDK retries an unreachable queue
        for minutes, and a stopping host must not wait for that. Messages an abandoned receive may have
        locked come back when their lock expires, as after any host crash: nothing is lost."""
        working = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not working.done():
            working.cancel()
            return default
        return working.result()

    async def poll_once(self) -> int:
        """Receive and run one batch; returns how many messages were handled."""
        async with self._client(self.queue_name) as queue:
            try:
                received = await self._receive(queue)
            except ResourceNotFoundError:
                await _create(queue)
                return 0
            await asyncio.gather(*(self._run(queue, message) for message in received))
            return len(received)

    async def _run(self, queue: QueueClient, message: Any) -> None:
        try:
            body = base64.b64decode(str(message.content), validate=True)
        except binascii.Error:
            await self._poison(queue, message, "its content is not valid base64 (the host's messageEncoding)")
            return
        invocation = QueueMessage(
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            pop_receipt=message.pop_receipt,
            insertion_time=message.inserted_on,
            expiration_time=message.expires_on,
            time_next_visible=message.next_visible_on,
        )
        started = time.perf_counter()
        renewal = asyncio.ensure_future(self._keep_locked(queue, message))
        try:
            await self.function(invocation)
        except Exception as error:
            renewal.cancel()
            self.invocations.append(
                Invocation(
                    message.id,
                    message.dequeue_count,
                    False,
                    time.perf_counter() - started,
                    f"{type(error).__name__}: {error}",
                )
            )
            log.warning(
                "%s: message %s failed (dequeue %d): %s", self.queue_name, message.id, message.dequeue_count, error
            )
            await self._after_failure(queue, message)
            return
        renewal.cancel()
        self.invocations.append(Invocation(message.id, message.dequeue_count, True, time.perf_counter() - started))
        try:
            await queue.delete_message(message.id, message.pop_receipt)
        except ResourceNotFoundError:
            log.warning("%s: message %s was gone before it could be deleted", self.queue_name, message.id)

    async def _keep_locked(self, queue: QueueClient, message: Any) -> None:
        """Renew the message's invisibility while its function runs, as the host does."""
        while True:
            await asyncio.sleep(self.settings.lock_seconds / 2)
            receipt = await queue.update_message(
                message.id, message.pop_receipt, visibility_timeout=int(self.settings.lock_seconds)
            )
            message.pop_receipt = receipt.pop_receipt

    async def _after_failure(self, queue: QueueClient, message: Any) -> None:
        if message.dequeue_count >= self.settings.max_dequeue_count:
            await self._poison(queue, message, f"it failed {message.dequeue_count} times")
        else:
            await queue.update_message(
                message.id, message.pop_receipt, visibility_timeout=int(self.settings.visibility_timeout)
            )

    async def _poison(self, queue: QueueClient, message: Any, reason: str) -> None:
        """Copy the message verbatim to `<queue>-poison`, then delete it from its queue."""
        async with self._client(f"{self.queue_name}-poison") as poison:
            await _create(poison)
            await poison.send_message(message.content)
        await queue.delete_message(message.id, message.pop_receipt)
        log.warning("%s: message %s moved to %s-poison: %s", self.queue_name, message.id, self.queue_name, reason)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set, as the host does: a new batch whenever in-flight messages drop to
        `new_batch_threshold`, polling backing off to `max_polling_interval` while the queue is empty;
        on stop, receive no more and let the in-flight invocations finish."""
        in_flight: set[asyncio.Task[None]] = set()
        interval = 0.1
        async with self._client(self.queue_name) as queue:
            await self._unless_stopped(stop, _create(queue), None)
            while not stop.is_set():
                if len(in_flight) > self.settings.new_batch_threshold:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    received = await self._unless_stopped(stop, self._receive(queue), [])
                except Exception as error:
                    log.warning("%s: receive failed: %s", self.queue_name, error)
                    received = []
                for message in received:
                    task = asyncio.ensure_future(self._run(queue, message))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if received:
                    interval = 0.1
                    continue
                try:
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                except TimeoutError:
                    interval = min(self.settings.max_polling_interval, interval * 2)
            if in_flight:
                await asyncio.wait(in_flight)

    async def drain(self, idle_polls: int = 1, timeout: float = 60) -> None:
        """Poll until the queue has stayed empty for `idle_polls` polls in a row (tests, scripts)."""
        deadline = time.monotonic() + timeout
        idle = 0
        while idle < idle_polls:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.queue_name} did not drain in {timeout} s")
            idle = idle + 1 if await self.poll_once() == 0 else 0


def _seconds(value: Any) -> float:
    """host.json time spans (`00:00:02`) or plain seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    hours, minutes, seconds = str(value).split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


async def _create(queue: QueueClient) -> None:
    with contextlib.suppress(ResourceExistsError):
        await queue.create_queue()
