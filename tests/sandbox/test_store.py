"""The store across versions and restarts: what a data directory keeps."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from sandbox.seed import DEFAULT_SEED, parse_seed
from sandbox.store import Store


def test_a_data_directory_from_an_older_version_is_seeded_afresh_keeping_its_signing_key(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('seed', '{}'), ('signing_key', 'ab');"
        "CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT, doc TEXT);"  # before immutable ids
    )
    old.commit()
    old.close()

    store = Store(path)
    assert not store.is_seeded()
    assert store.signing_key() == bytes.fromhex("ab")
    raw = json.loads(DEFAULT_SEED.read_text())
    store.reset(parse_seed(raw), raw)
    assert len(store.mailbox_messages(store.user("support@contoso.test"))) == 5


def test_a_users_exchange_fields_override_the_tenants(tmp_path: Path) -> None:
    raw = json.loads(DEFAULT_SEED.read_text())
    raw["exchange"] = {"messagesPerMinute": 10}
    raw["users"][0]["exchange"] = {"recipientsPerDay": None}
    seed = parse_seed(raw)
    limits = seed.limits_of(seed.users[0])
    assert (limits.messages_per_minute, limits.recipients_per_day, limits.max_message_size_mb) == (10, None, 35)
    store = Store(tmp_path / "sandbox.db")
    store.reset(seed, raw)
    assert store.exchange_limits(store.user(seed.users[0].user_principal_name)).recipients_per_day is None
    assert store.exchange_limits(store.user("bob@contoso.test")).messages_per_minute == 10
