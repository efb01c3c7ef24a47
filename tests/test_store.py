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
