"""The sandbox's state in SQLite: directory, vault, mailboxes (folders and messages) and sent mail.

One connection, used from the event loop only; WAL keeps writes cheap. Directory lookups that every Graph
request makes (users) are cached in memory and dropped on reset.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .clock import CLOCK, stamp
from .messages import columns_of, new_id, now, seeded_message
from .odata import SqlFilter
from .seed import ExchangeLimits, Seed

WELL_KNOWN_FOLDERS = (
    # (well-known name, display name, hidden)
    ("inbox", "Inbox", False),
    ("drafts", "Drafts", False),
    ("sentitems", "Sent Items", False),
    ("deleteditems", "Deleted Items", False),
    ("junkemail", "Junk Email", False),
    ("archive", "Archive", False),
    ("outbox", "Outbox", False),
    ("conversationhistory", "Conversation History", False),
    ("recoverableitemsdeletions", "Quick Step Settings", True),
)
ROOT = "msgfolderroot"
VISIBLE = "m.visible <= sandbox_now()"  # mail whose delivery time (sandbox clock) has come
FOLDER_COLUMNS = {
    "displayname": "f.display_name",
    "parentfolderid": "f.parent_id",
    "ishidden": "f.is_hidden",
    "totalitemcount": "(SELECT COUNT(*) FROM messages m WHERE m.mailbox = f.mailbox AND m.folder_id = f.id "
    f"AND {VISIBLE})",
    "unreaditemcount": "(SELECT COUNT(*) FROM messages m WHERE m.mailbox = f.mailbox AND m.folder_id = f.id "
    f"AND m.is_read = 0 AND {VISIBLE})",
    "childfoldercount": "(SELECT COUNT(*) FROM folders c WHERE c.parent_id = f.id)",
}
SCHEMA_VERSION = "2"  # a data directory from another version is re-seeded, not migrated
_TABLES = (
    "users", "principals", "vault_secrets", "folders", "messages", "removals", "outbound", "blocks", "uploads",
    "upload_chunks", "upload_usage",
)  # fmt: skip
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY, upn TEXT NOT NULL UNIQUE COLLATE NOCASE, display_name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS principals (
    client_id TEXT PRIMARY KEY, kind TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vault_secrets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL COLLATE NOCASE, version TEXT NOT NULL,
    value TEXT NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS folders (
    id TEXT PRIMARY KEY, mailbox TEXT NOT NULL, parent_id TEXT, display_name TEXT NOT NULL,
    well_known TEXT, is_hidden INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS folders_parent ON folders (mailbox, parent_id);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, immutable_id TEXT NOT NULL UNIQUE,
    mailbox TEXT NOT NULL, folder_id TEXT NOT NULL, visible REAL NOT NULL, changed INTEGER NOT NULL,
    received TEXT NOT NULL, sent TEXT NOT NULL, is_read INTEGER NOT NULL,
    from_address TEXT NOT NULL, subject TEXT NOT NULL, importance TEXT NOT NULL,
    has_attachments INTEGER NOT NULL, categories TEXT NOT NULL, flag_status TEXT NOT NULL,
    inference TEXT NOT NULL, conversation_id TEXT NOT NULL, ext_props TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS messages_folder ON messages (mailbox, folder_id, received);
CREATE INDEX IF NOT EXISTS messages_mailbox ON messages (mailbox, received);
CREATE INDEX IF NOT EXISTS messages_changes ON messages (mailbox, folder_id, changed);
CREATE TABLE IF NOT EXISTS removals (
    changed INTEGER PRIMARY KEY, mailbox TEXT NOT NULL, folder_id TEXT NOT NULL, id TEXT NOT NULL,
    immutable_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS removals_folder ON removals (mailbox, folder_id, changed);
CREATE TABLE IF NOT EXISTS outbound (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, sender TEXT NOT NULL, sent TEXT NOT NULL, submitted REAL NOT NULL,
    delivered REAL, counted INTEGER NOT NULL, ndr TEXT, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS outbound_sender ON outbound (sender, submitted);
CREATE TABLE IF NOT EXISTS blocks (mailbox TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, mailbox TEXT NOT NULL, message TEXT NOT NULL, app TEXT NOT NULL, doc TEXT NOT NULL,
    expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS upload_chunks (
    upload TEXT NOT NULL, start INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (upload, start));
CREATE TABLE IF NOT EXISTS upload_usage (app TEXT NOT NULL, mailbox TEXT NOT NULL, at REAL NOT NULL,
    bytes INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS upload_usage_window ON upload_usage (app, mailbox, at);
"""


@dataclass(frozen=True)
class User:
    id: str
    upn: str
    display_name: str


@dataclass(frozen=True)
class Folder:
    id: str
    mailbox: str
    parent_id: str | None
    display_name: str
    well_known: str | None
    is_hidden: bool


class Store:
    """All sandbox state. Methods raise KeyError for what does not exist; callers map it to HTTP."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.create_function("sandbox_now", 0, CLOCK.time)
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        if self.meta("schema") != SCHEMA_VERSION:
            for table in _TABLES:
                self.db.execute(f"DROP TABLE IF EXISTS {table}")
            self.db.execute("DELETE FROM meta WHERE key = 'seed'")
            self.set_meta("schema", SCHEMA_VERSION)
        self.db.executescript(_SCHEMA)
        CLOCK.offset = float(self.meta("clock_offset") or 0)
        self._users: dict[str, User] = {}
        self._roots: dict[str, Folder] = {}
        self._limits: dict[str, ExchangeLimits] = {}
        self._domain: str | None = None
        self._change = self._last_change()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One SQLite transaction; nested calls join the outer one."""
        if self.db.in_transaction:
            yield
            return
        with self.db:
            self.db.execute("BEGIN")
            yield

    # -- clock ------------------------------------------------------------------------------------------
    def advance_clock(self, seconds: float) -> None:
        """Move the sandbox's time forward (never back), persisted across restarts."""
        CLOCK.offset += seconds
        self.set_meta("clock_offset", repr(CLOCK.offset))

    # -- meta and seed ------------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def signing_key(self) -> bytes:
        """The token signing key: made once per data directory, kept across resets."""
        key = self.meta("signing_key")
        if key is None:
            key = secrets.token_hex(32)
            self.set_meta("signing_key", key)
        return bytes.fromhex(key)

    def is_seeded(self) -> bool:
        return self.meta("seed") is not None

    def reset(self, seed: Seed, raw: dict[str, Any]) -> None:
        """Replace all state but the signing key with the seed's."""
        CLOCK.offset = 0.0
        with self.transaction():
            for table in _TABLES:
                self.db.execute(f"DELETE FROM {table}")
            self.set_meta("clock_offset", "0")
            self.set_meta("seed", json.dumps(raw))
            self.set_meta(
                "exchange",
                json.dumps(
                    {user.user_principal_name: seed.limits_of(user).model_dump(by_alias=True) for user in seed.users}
                ),
            )
            self.set_meta("tenant", seed.tenant.model_dump_json())
            self.set_meta("identity_header", seed.identity_header)
            self.set_meta("token_lifetime", str(seed.token_lifetime_seconds))
            for user in seed.users:
                user_id = user.id or str(uuid.uuid5(uuid.NAMESPACE_DNS, user.user_principal_name))
                self.db.execute(
                    "INSERT INTO users VALUES (?, ?, ?)",
                    (user_id, user.user_principal_name, user.display_name or user.user_principal_name),
                )
            for app in seed.apps:
                self.db.execute(
                    "INSERT INTO principals VALUES (?, 'app', ?)", (app.client_id, app.model_dump_json(by_alias=True))
                )
            for identity in seed.managed_identities:
                self.db.execute(
                    "INSERT INTO principals VALUES (?, 'identity', ?)",
                    (identity.client_id, identity.model_dump_json(by_alias=True)),
                )
            for name, value in seed.key_vault.secrets.items():
                self._add_secret(name, value)
            self.set_meta("vault_readers", json.dumps(seed.key_vault.readers))
        self._users.clear()
        self._roots.clear()
        self._limits.clear()
        self._domain = None
        for user in seed.users:
            self.deliver_seeded(self.user(user.user_principal_name), user.messages)

    def tenant(self) -> dict[str, str]:
        tenant: dict[str, str] = json.loads(self.meta("tenant") or "{}")
        return tenant

    def tenant_domain(self) -> str:
        """The tenant's domain, lower case (cached: every send asks)."""
        if self._domain is None:
            self._domain = self.tenant().get("domain", "").lower()
        return self._domain

    def exchange_limits(self, user: User) -> ExchangeLimits:
        """The mailbox's Exchange sending limits (the defaults for a mailbox the seed did not list)."""
        cached = self._limits.get(user.upn)
        if cached is None:
            configured = json.loads(self.meta("exchange") or "{}").get(user.upn.lower())
            cached = ExchangeLimits.model_validate(configured or {})
            self._limits[user.upn] = cached
        return cached

    def token_lifetime(self) -> int:
        return int(self.meta("token_lifetime") or 3599)

    def identity_header(self) -> str:
        return self.meta("identity_header") or ""

    # -- directory ------------------------------------------------------------------------------------
    def user(self, key: str) -> User:
        """A user by UPN (any case) or object id."""
        cached = self._users.get(key.lower())
        if cached:
            return cached
        row = self.db.execute("SELECT * FROM users WHERE upn = ? OR id = ?", (key, key.lower())).fetchone()
        if row is None:
            raise KeyError(key)
        user = User(row["id"], row["upn"], row["display_name"])
        self._users[key.lower()] = user
        return user

    def users(self) -> list[User]:
        rows = self.db.execute("SELECT * FROM users ORDER BY upn").fetchall()
        return [User(r["id"], r["upn"], r["display_name"]) for r in rows]

    def principal(self, client_id: str) -> tuple[str, dict[str, Any]]:
        """An app registration or managed identity: (kind, document)."""
        row = self.db.execute("SELECT kind, doc FROM principals WHERE client_id = ?", (client_id,)).fetchone()
        if row is None:
            raise KeyError(client_id)
        return row["kind"], json.loads(row["doc"])

    def first_identity(self) -> str:
        row = self.db.execute("SELECT client_id FROM principals WHERE kind = 'identity' ORDER BY rowid").fetchone()
        if row is None:
            raise KeyError("managed identity")
        return str(row["client_id"])

    def rotate_app_secret(self, client_id: str, secret: str, keep_existing: bool) -> None:
        kind, doc = self.principal(client_id)
        if kind != "app":
            raise KeyError(client_id)
        doc["secrets"] = (doc["secrets"] if keep_existing else []) + [secret]
        self.db.execute("UPDATE principals SET doc = ? WHERE client_id = ?", (json.dumps(doc), client_id))

    # -- key vault ------------------------------------------------------------------------------------
    def _add_secret(self, name: str, value: str) -> str:
        version = uuid.uuid4().hex
        self.db.execute(
            "INSERT INTO vault_secrets (name, version, value, created) VALUES (?, ?, ?, "
            "CAST(strftime('%s') AS INTEGER))",
            (name, version, value),
        )
        return version

    def set_secret(self, name: str, value: str) -> str:
        return self._add_secret(name, value)

    def secret(self, name: str, version: str | None = None) -> sqlite3.Row:
        row: sqlite3.Row | None
        if version:
            row = self.db.execute(
                "SELECT * FROM vault_secrets WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT * FROM vault_secrets WHERE name = ? ORDER BY seq DESC LIMIT 1", (name,)
            ).fetchone()
        if row is None:
            raise KeyError(name)
        return row

    def vault_readers(self) -> list[str]:
        readers: list[str] = json.loads(self.meta("vault_readers") or "[]")
        return readers

    # -- folders --------------------------------------------------------------------------------------
    def _create_folder(
        self, mailbox: str, parent_id: str | None, name: str, well_known: str | None = None, hidden: bool = False
    ) -> Folder:
        folder = Folder(new_id(), mailbox, parent_id, name, well_known, hidden)
        self.db.execute(
            "INSERT INTO folders VALUES (?, ?, ?, ?, ?, ?, CAST(strftime('%s') AS INTEGER))",
            (folder.id, mailbox, parent_id, name, well_known, int(hidden)),
        )
        return folder

    def _ensure_mailbox(self, user: User) -> Folder:
        if user.id in self._roots:
            return self._roots[user.id]
        self._roots[user.id] = self._mailbox_root(user)
        return self._roots[user.id]

    def _mailbox_root(self, user: User) -> Folder:
        row = self.db.execute("SELECT * FROM folders WHERE mailbox = ? AND well_known = ?", (user.id, ROOT)).fetchone()
        if row:
            return _folder(row)
        root = self._create_folder(user.id, None, "Top of Information Store", ROOT, hidden=True)
        for well_known, display_name, hidden in WELL_KNOWN_FOLDERS:
            self._create_folder(user.id, root.id, display_name, well_known, hidden)
        return root

    def folder(self, user: User, key: str) -> Folder:
        """A folder by id or well-known name."""
        self._ensure_mailbox(user)
        row = self.db.execute(
            "SELECT * FROM folders WHERE mailbox = ? AND (id = ? OR well_known = ?)", (user.id, key, key.lower())
        ).fetchone()
        if row is None:
            raise KeyError(key)
        return _folder(row)

    def query_folders(
        self,
        user: User,
        *,
        parent_id: str | None = None,
        folder_id: str | None = None,
        include_hidden: bool = True,
        where: SqlFilter | None = None,
        top: int = -1,
        skip: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Folders with their item, unread and child counts; (page, total matching)."""
        self._ensure_mailbox(user)
        conditions = ["f.mailbox = ?"]
        params: list[Any] = [user.id]
        if parent_id is not None:
            conditions.append("f.parent_id = ?")
            params.append(parent_id)
        if folder_id is not None:
            conditions.append("f.id = ?")
            params.append(folder_id)
        if not include_hidden:
            conditions.append("f.is_hidden = 0")
        if where is not None:
            conditions.append(where.where)
            params.extend(where.params)
        clause = " AND ".join(conditions)
        rows = self.db.execute(
            f"SELECT f.*, {FOLDER_COLUMNS['totalitemcount']} AS total, {FOLDER_COLUMNS['unreaditemcount']} AS unread, "
            f"{FOLDER_COLUMNS['childfoldercount']} AS children FROM folders f WHERE {clause} "
            "ORDER BY f.created, f.rowid LIMIT ? OFFSET ?",
            (*params, top, skip),
        ).fetchall()
        total = self.db.execute(f"SELECT COUNT(*) FROM folders f WHERE {clause}", params).fetchone()[0]
        return [_folder_document(row) for row in rows], total

    def folder_by_path(self, user: User, path: str) -> Folder:
        """A folder from a well-known name, a display name or a path like `Inbox/Escalations`; made if missing."""
        root = self._ensure_mailbox(user)
        parts = [p for p in path.split("/") if p.strip()]
        if not parts:
            raise KeyError(path)
        current = root
        for depth, part in enumerate(parts):
            row = None
            if depth == 0:
                row = self.db.execute(
                    "SELECT * FROM folders WHERE mailbox = ? AND well_known = ? AND well_known != ?",
                    (user.id, part.lower(), ROOT),
                ).fetchone()
            row = (
                row
                or self.db.execute(
                    "SELECT * FROM folders WHERE mailbox = ? AND parent_id = ? AND display_name = ? COLLATE NOCASE",
                    (user.id, current.id, part.strip()),
                ).fetchone()
            )
            current = _folder(row) if row else self._create_folder(user.id, current.id, part.strip())
        return current

    def update_folder(
        self, user: User, folder_id: str, *, display_name: str | None = None, parent_id: str | None = None
    ) -> None:
        """Rename a folder or move it under another parent (its id, messages and children stay with it)."""
        with self.transaction():
            if display_name is not None:
                self.db.execute(
                    "UPDATE folders SET display_name = ? WHERE mailbox = ? AND id = ?",
                    (display_name, user.id, folder_id),
                )
            if parent_id is not None:
                self.db.execute(
                    "UPDATE folders SET parent_id = ? WHERE mailbox = ? AND id = ?", (parent_id, user.id, folder_id)
                )

    # -- messages -------------------------------------------------------------------------------------
    def _last_change(self) -> int:
        row = self.db.execute(
            "SELECT MAX(c) FROM (SELECT MAX(changed) AS c FROM messages UNION ALL SELECT MAX(changed) FROM removals)"
        ).fetchone()
        return int(row[0] or 0)

    def _next_change(self) -> int:
        """The next number of the mailbox change counter that delta tokens are watermarks of."""
        self._change += 1
        return self._change

    def insert_message(self, user: User, document: dict[str, Any], visible: float | None = None) -> None:
        """Store a message; it shows in its folder from `visible` (sandbox time; now by default)."""
        columns = columns_of(document)
        names = ", ".join(("id", "mailbox", "visible", "changed", *columns, "doc"))
        marks = ", ".join("?" * (len(columns) + 5))
        self.db.execute(
            f"INSERT INTO messages ({names}) VALUES ({marks})",
            (
                document["id"],
                user.id,
                CLOCK.time() if visible is None else visible,
                self._next_change(),
                *columns.values(),
                json.dumps(document),
            ),
        )

    def deliver_seeded(self, user: User, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Deliver seeded inbound mail (each with an optional folder), in one transaction."""
        delivered = []
        folders: dict[str, Folder] = {}
        with self.transaction():
            for source in sources:
                path = str(source.get("folder") or "inbox")
                folder = folders.get(path.lower()) or self.folder_by_path(user, path)
                folders[path.lower()] = folder
                document = seeded_message(source, folder.id)
                self.insert_message(user, document)
                delivered.append(document)
        return delivered

    def message(self, user: User, message_id: str) -> dict[str, Any]:
        """A message by its default or immutable id, once it is visible."""
        row = self.db.execute(
            "SELECT doc FROM messages m WHERE (id = ?1 OR immutable_id = ?1) AND mailbox = ?2 AND visible <= ?3",
            (message_id, user.id, CLOCK.time()),
        ).fetchone()
        if row is None:
            raise KeyError(message_id)
        document: dict[str, Any] = json.loads(row["doc"])
        return document

    def replace_message(self, user: User, document: dict[str, Any], visible: float | None = None) -> None:
        """Write a changed message back (its immutable id finds it); a new default id or folder moves it."""
        columns = columns_of(document)
        assignments = ", ".join(f"{name} = ?" for name in ("id", "changed", *columns, "doc"))
        extra = ", visible = ?" if visible is not None else ""
        self.db.execute(
            f"UPDATE messages SET {assignments}{extra} WHERE immutable_id = ? AND mailbox = ?",
            (
                document["id"],
                self._next_change(),
                *columns.values(),
                json.dumps(document),
                *([visible] if visible is not None else []),
                document["immutableId"],
                user.id,
            ),
        )

    def _record_removal(self, user: User, document: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO removals VALUES (?, ?, ?, ?, ?)",
            (self._next_change(), user.id, document["parentFolderId"], document["id"], document["immutableId"]),
        )

    def move_message(
        self, user: User, document: dict[str, Any], folder_id: str, visible: float | None = None
    ) -> dict[str, Any]:
        """Move a message to another folder: Exchange gives it a new default id; the immutable id stays."""
        with self.transaction():
            self._record_removal(user, document)
            moved = dict(document, id=new_id(), parentFolderId=folder_id, lastModifiedDateTime=now())
            self.replace_message(user, moved, visible)
        return moved

    def delete_message(self, user: User, document: dict[str, Any]) -> None:
        with self.transaction():
            self._record_removal(user, document)
            self.db.execute(
                "DELETE FROM messages WHERE immutable_id = ? AND mailbox = ?", (document["immutableId"], user.id)
            )

    def query_messages(
        self,
        user: User,
        folder_id: str | None,
        where: SqlFilter | None,
        order: list[str],
        top: int,
        skip: int,
        count: bool,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of visible messages (and the total matching, when asked)."""
        conditions = ["mailbox = ?", "visible <= ?"]
        params: list[Any] = [user.id, CLOCK.time()]
        if folder_id is not None:
            conditions.append("folder_id = ?")
            params.append(folder_id)
        if where is not None:
            conditions.append(where.where)
            params.extend(where.params)
        clause = " AND ".join(conditions)
        tie_break = "seq DESC" if not order or order[0].endswith("DESC") else "seq ASC"
        ordering = ", ".join([*order, tie_break])
        rows = self.db.execute(
            f"SELECT doc FROM messages m WHERE {clause} ORDER BY {ordering} LIMIT ? OFFSET ?",
            (*params, top, skip),
        ).fetchall()
        total = None
        if count:
            total = self.db.execute(f"SELECT COUNT(*) FROM messages m WHERE {clause}", params).fetchone()[0]
        return [json.loads(r["doc"]) for r in rows], total

    def mailbox_messages(self, user: User, folder_id: str | None = None) -> list[dict[str, Any]]:
        """Every visible message of a mailbox (or folder), newest first: for the control API and web page."""
        documents, _ = self.query_messages(user, folder_id, None, ["received DESC"], -1, 0, False)
        return documents

    def message_count(self, user: User) -> int:
        """Visible items over all folders of a mailbox."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM messages m WHERE mailbox = ? AND visible <= ?", (user.id, CLOCK.time())
        ).fetchone()
        return int(row[0])

    # -- delta ----------------------------------------------------------------------------------------
    def change_mark(self) -> int:
        return self._change

    def delta_messages(
        self,
        user: User,
        folder_id: str,
        window: tuple[int, int, float, float],
        after: int,
        limit: int,
        received: tuple[str, str] | None = None,
    ) -> list[tuple[int, dict[str, Any]]]:
        """(change number, message) of a folder's messages created or changed in a delta round, oldest change
        first: changed between the watermarks `since < changed <= upto`, or changed before but delivered
        (become visible) between the round's times `since_time < visible <= upto_time`."""
        since, upto, since_time, upto_time = window
        condition, params = "", []
        if received is not None:
            condition, params = f" AND received {'>=' if received[0] == 'ge' else '>'} ?", [received[1]]
        rows = self.db.execute(
            "SELECT changed, doc FROM messages m WHERE mailbox = ? AND folder_id = ? AND visible <= ? AND changed > ? "
            "AND ((changed > ? AND changed <= ?) OR (changed <= ? AND visible > ?))"
            f"{condition} ORDER BY changed LIMIT ?",
            (user.id, folder_id, upto_time, after, since, upto, since, since_time, *params, limit),
        ).fetchall()
        return [(int(r["changed"]), json.loads(r["doc"])) for r in rows]

    def delta_removals(
        self, user: User, folder_id: str, since: int, upto: int, after: int, limit: int
    ) -> list[sqlite3.Row]:
        """Messages deleted from or moved out of a folder between the watermarks: (changed, id, immutable_id)."""
        return self.db.execute(
            "SELECT changed, id, immutable_id FROM removals WHERE mailbox = ? AND folder_id = ? AND changed > ? "
            "AND changed <= ? ORDER BY changed LIMIT ?",
            (user.id, folder_id, max(since, after), upto, limit),
        ).fetchall()

    # -- sending --------------------------------------------------------------------------------------
    def record_outbound(
        self,
        sender: User,
        record: dict[str, Any],
        *,
        submitted: float,
        delivered: float | None,
        counted: int,
        ndr: str | None,
    ) -> None:
        """The transport's log of a submitted message (served by `GET /_sandbox/sent`)."""
        self.db.execute(
            "INSERT INTO outbound (sender, sent, submitted, delivered, counted, ndr, doc) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (sender.upn, stamp(submitted), submitted, delivered, counted, ndr, json.dumps(record)),
        )

    def sending_history(self, sender: User, since: float) -> list[sqlite3.Row]:
        """What a mailbox submitted since a time: (submitted, delivered, counted), oldest first."""
        return self.db.execute(
            "SELECT submitted, delivered, counted FROM outbound WHERE sender = ? AND submitted > ? ORDER BY seq",
            (sender.upn, since),
        ).fetchall()

    def blocked_until(self, sender: User) -> float:
        row = self.db.execute("SELECT until FROM blocks WHERE mailbox = ?", (sender.upn,)).fetchone()
        return float(row["until"]) if row else 0.0

    def block(self, sender: User, until: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO blocks VALUES (?, ?)", (sender.upn, until))

    def outbound(self, since: int, sender: User | None = None) -> list[dict[str, Any]]:
        condition, params = ("AND sender = ?", [sender.upn]) if sender else ("", [])
        rows = self.db.execute(
            f"SELECT * FROM outbound WHERE seq > ? {condition} ORDER BY seq", (since, *params)
        ).fetchall()
        return [
            {
                **json.loads(r["doc"]),
                "seq": r["seq"],
                "mailbox": r["sender"],
                "sent": r["sent"],
                "submittedAt": stamp(r["submitted"]),
                "deliveredAt": stamp(r["delivered"]) if r["delivered"] is not None else None,
            }
            for r in rows
        ]

    # -- upload sessions ------------------------------------------------------------------------------
    def create_upload(self, session_id: str, user: User, message_id: str, app: str, doc: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
            (session_id, user.id, message_id, app, json.dumps(doc), doc["expires"]),
        )

    def upload(self, session_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self.db.execute("SELECT * FROM uploads WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise KeyError(session_id)
        return row

    def upload_received(self, session_id: str) -> int:
        row = self.db.execute(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM upload_chunks WHERE upload = ?", (session_id,)
        ).fetchone()
        return int(row[0])

    def add_chunk(self, session_id: str, start: int, data: bytes, app: str, mailbox: str) -> None:
        with self.transaction():
            self.db.execute("INSERT INTO upload_chunks VALUES (?, ?, ?)", (session_id, start, data))
            self.db.execute("INSERT INTO upload_usage VALUES (?, ?, ?, ?)", (app, mailbox, CLOCK.time(), len(data)))

    def uploaded_bytes(self, app: str, mailbox: str, since: float) -> tuple[int, float | None]:
        """Bytes an app uploaded into a mailbox since a time, and when the oldest of them was."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(bytes), 0), MIN(at) FROM upload_usage WHERE app = ? AND mailbox = ? AND at > ?",
            (app, mailbox, since),
        ).fetchone()
        return int(row[0]), row[1]

    def upload_content(self, session_id: str) -> bytes:
        rows = self.db.execute(
            "SELECT data FROM upload_chunks WHERE upload = ? ORDER BY start", (session_id,)
        ).fetchall()
        return b"".join(r["data"] for r in rows)

    def finish_upload(self, session_id: str) -> None:
        """Forget a finished or cancelled session; its bytes stay counted against the upload rate."""
        with self.transaction():
            self.db.execute("DELETE FROM uploads WHERE id = ?", (session_id,))
            self.db.execute("DELETE FROM upload_chunks WHERE upload = ?", (session_id,))


def _folder(row: sqlite3.Row) -> Folder:
    return Folder(
        row["id"], row["mailbox"], row["parent_id"], row["display_name"], row["well_known"], bool(row["is_hidden"])
    )


def _folder_document(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "displayName": row["display_name"],
        "parentFolderId": row["parent_id"],
        "childFolderCount": row["children"],
        "unreadItemCount": row["unread"],
        "totalItemCount": row["total"],
        "sizeInBytes": 0,
        "isHidden": bool(row["is_hidden"]),
    }
