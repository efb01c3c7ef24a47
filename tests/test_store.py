"""The store on its own: Storage trouble at first use does not stick to the process."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.core.exceptions import AzureError

from devhost.azurite import AzuriteProcess, free_port
from shared.store import MailStatus, Store

from .helpers import run


def test_storage_that_was_down_at_first_use_works_once_it_is_back(tmp_path: Path) -> None:
    azurite = AzuriteProcess(tmp_path / "azurite", (free_port(), free_port(), free_port()))

    async def scenario() -> MailStatus | None:
        store = Store(azurite.connection_string)
        try:
            with pytest.raises(AzureError):  # nothing listens yet
                await store.ensure()
            azurite.start()
            await store.create_status(MailStatus(id="after-outage", status="queued"))
            return await store.get_status("after-outage")
        finally:
            await store.close()

    try:
        status = run(scenario())
    finally:
        azurite.stop(grace=2)
    assert status is not None and status.status == "queued"


def test_the_heartbeat_lists_the_instances_heard_from_recently(azurite: AzuriteProcess) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        store = Store(azurite.connection_string)
        try:
            await store.heartbeat("instance-a", 10)
            both = await store.heartbeat("instance-b", 10)
            only_recent = await store.heartbeat("instance-b", 0.0001)  # a's beat is older than that
            return both, only_recent
        finally:
            await store.close()

    both, only_recent = run(scenario())
    assert {"instance-a", "instance-b"} <= set(both)
    assert only_recent == ["instance-b"]
