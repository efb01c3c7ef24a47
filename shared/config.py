"""Settings: every app setting read and checked once, with one clear message naming a bad one."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from .text import ADDRESS, DOMAIN

DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)  # Azurite's well-known development account (public, documented)
APP_ROOT = Path(__file__).resolve().parent.parent  # relative paths in settings are relative to the app
# MAIL_MAX_MESSAGE_BYTES (the encoded message, as Exchange measures it): Exchange Online's default maximum message
# size is 35 MB, raisable to 150 MB, which is also the most Graph's upload sessions take
DEFAULT_MAX_MESSAGE_BYTES = 35 * 1024 * 1024
MIN_MAX_MESSAGE_BYTES = 1024 * 1024
MAX_MAX_MESSAGE_BYTES = 150 * 1024 * 1024


class ConfigError(ValueError):
    """A missing or invalid setting; the message names it."""


@dataclass(frozen=True)
class StorageAccount:
    """Where the app's queues, tables and blobs live, and how it signs in there: a connection string (Azurite,
    or an account with shared keys), or, as the Functions host reads `AzureWebJobsStorage__*`, the account's
    service URLs reached with the managed identity (`client_id` for a user-assigned one)."""

    connection_string: str | None
    blob_url: str = ""
    queue_url: str = ""
    table_url: str = ""
    client_id: str | None = None


_STORAGE = "AzureWebJobsStorage"
_SERVICES = ("blob", "queue", "table")


@dataclass(frozen=True)
class Settings:
    graph_auth_mode: str
    graph_tenant_id: str
    graph_client_id: str
    key_vault_url: str
    graph_credential_secret_name: str
    graph_credential_kind: str
    azure_client_id: str | None
    azure_authority_host: str
    graph_base_url: str
    key_vault_verify_challenge_resource: bool
    mail_default_sender: str
    mail_allowed_senders: frozenset[str]
    mail_allowed_recipient_domains: frozenset[str]
    storage: StorageAccount
    notify_config: str
    alert_digest_schedule: str
    mailbox_digest_schedule: str
    digest_grace_minutes: int
    audit_recipients: str
    send_lease_seconds: int
    mail_max_message_bytes: int
    library_log_level: str
    mail_delivery_mode: str = "auto"
    budget_messages_per_minute: int = 25
    budget_recipients_per_day: int = 9000
    budget_alert_reserve_percent: int = 20
    mail_priority_senders: frozenset[str] = frozenset()
    mail_sender_pools: tuple[tuple[str, tuple[str, ...]], ...] = ()
    mail_queue_blob_prefixes: tuple[str, ...] = ()  # full references: `mail-attachments/<folder>/`
    mail_api_blob_prefixes: tuple[str, ...] = ()

    def may_send_as(self, address: str) -> bool:
        """The sending policy: MAIL_ALLOWED_SENDERS (the default sender always included)."""
        return address.lower() in self.mail_allowed_senders

    def may_mail(self, address: str) -> bool:
        """The recipient policy: MAIL_ALLOWED_RECIPIENT_DOMAINS (`*`: any domain); unset, the domains of the
        default sender and the other allowed senders."""
        domains = self.mail_allowed_recipient_domains
        return ANY_DOMAIN in domains or address.rsplit("@", 1)[-1].lower() in domains

    def recipient_fence(self) -> str:
        """The recipient fence in force, in words (the start-up log says it)."""
        domains = self.mail_allowed_recipient_domains
        if ANY_DOMAIN in domains:
            return "MAIL_ALLOWED_RECIPIENT_DOMAINS=*: any recipient domain"
        return f"recipients only in {', '.join(sorted(domains))}"

    def may_use_alert_lanes(self, senders: tuple[str, ...]) -> bool:
        """Whether mail from these mailboxes (one sender, or a pool's members) may claim the alert lanes:
        MAIL_PRIORITY_SENDERS lists every one of them."""
        return bool(senders) and all(s.lower() in self.mail_priority_senders for s in senders)

    def sender_pool(self, name: str) -> tuple[str, ...] | None:
        """The members of a sender pool (MAIL_SENDER_POOLS), or None when there is no pool of that name."""
        return dict(self.mail_sender_pools).get(name)

    @property
    def graph_host(self) -> str:
        return urlsplit(self.graph_base_url).hostname or ""


def _text(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name)
    if value is None or not value.strip():
        if default is None:
            raise ConfigError(f"setting {name} is required")
        return default
    value = value.strip()
    if value.startswith("@Microsoft.KeyVault("):
        raise ConfigError(
            f"setting {name} is an unresolved Key Vault reference ({value}): check that the app's "
            "identity may read that secret and that the reference is spelled right"
        )
    return value


ANY_DOMAIN = "*"  # MAIL_ALLOWED_RECIPIENT_DOMAINS: recipients in any domain
DELIVERY_MODES = {  # MAIL_DELIVERY_MODE's values, and what each means (the start-up log and health say it)
    "auto": "drafts (exactly once) where the app may write the sending mailbox, sendMail where Graph refuses them",
    "draft": "drafts only (exactly once); needs Mail.ReadWrite in every sending mailbox",
    "sendmail": "sendMail only (Mail.Send); a retry after a lost answer can duplicate a mail",
}


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _text(env, name, default).lower()
    if value not in choices:
        raise ConfigError(f"setting {name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _https_url(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = _text(env, name, default).rstrip("/")
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"setting {name} must be an https:// URL, not {value!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _text(env, name, "true" if default else "false").lower()
    if value not in {"true", "false", "1", "0", "yes", "no"}:
        raise ConfigError(f"setting {name} must be true or false, not {value!r}")
    return value in {"true", "1", "yes"}


# 1-3 folders of a blob reference (`shared.mail.BLOB_PATTERN`'s segments), each ending with `/`, no `..` anywhere
_BLOB_FOLDER = re.compile(r"^(?!.*\.\.)(?:[A-Za-z0-9_][A-Za-z0-9._:-]{0,127}/){1,3}\Z")


def _blob_prefixes(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma list of folders of `mail-attachments` (`exports/`, `reports/daily/`) as full references; the
    app's own `forms/` folder is never one of them."""
    from .routes import MAIL_ATTACHMENTS

    prefixes = []
    for given in (p.strip() for p in _text(env, name, "").split(",")):
        if not given:
            continue
        folder = given.removeprefix(f"{MAIL_ATTACHMENTS}/")
        if not _BLOB_FOLDER.match(folder):
            raise ConfigError(f"setting {name}: {given!r} is not a folder of {MAIL_ATTACHMENTS} such as exports/")
        if folder.split("/")[0] == "forms":
            raise ConfigError(f"setting {name}: forms/ holds the files the app stores for each mail")
        prefixes.append(f"{MAIL_ATTACHMENTS}/{folder}")
    return tuple(prefixes)


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = _text(env, name, str(default))
    if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:  # isdigit() also takes `²`
        raise ConfigError(f"setting {name} must be a whole number from {low} to {high}, not {text!r}")
    return int(text)


def _address(name: str, value: str) -> str:
    if not ADDRESS.match(value) or len(value) > 254:
        raise ConfigError(f"setting {name}: {value!r} is not an email address")
    return value.lower()


_CRON_FIELDS = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_CRON_ITEM = re.compile(r"^(\*|(\w+)(?:-(\w+))?)(?:/(\d+))?\Z", re.ASCII)  # int() takes other digits too


def ncrontab_problem(expression: str) -> str | None:
    """Why an expression is not a six-field NCRONTAB (seconds first) as the Functions timer takes it; None if
    it is one."""
    fields = expression.split()
    if len(fields) != 6:
        return f"it has {len(fields)} fields; NCRONTAB has six, seconds first (e.g. '0 0 7 * * 1-5')"
    for text, (what, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            match = _CRON_ITEM.match(item.upper())
            if match is None:
                return f"the {what} field {text!r} is not a value, range, list or step"
            for value in (match.group(2), match.group(3)):
                if value is None:
                    continue
                digits = re.fullmatch(r"[0-9]{1,2}", value)
                number = names.index(value) + low if value in names else (int(value) if digits else None)
                if number is None or not low <= number <= high:
                    return f"the {what} field {text!r} is outside {low}-{high}"
            if match.group(4) is not None and int(match.group(4)) == 0:
                return f"the {what} field {text!r} has a step of 0"
    return None


def _schedule(env: Mapping[str, str], name: str, default: str) -> str:
    value = _text(env, name, default)
    problem = ncrontab_problem(value)
    if problem:
        raise ConfigError(f"setting {name}: {value!r} is not an NCRONTAB schedule: {problem}")
    return value


def _storage(env: Mapping[str, str]) -> StorageAccount:
    """`AzureWebJobsStorage` as a connection string, else its identity-based form (`__accountName`, or the
    three `__<service>ServiceUri`, with `__clientId` for a user-assigned identity), else Azurite."""
    if env.get(_STORAGE, "").strip():
        text = _text(env, _STORAGE)
        if text.replace(" ", "").lower() == "usedevelopmentstorage=true":
            return StorageAccount(DEVELOPMENT_STORAGE)
        if "AccountName=" not in text and "QueueEndpoint=" not in text:
            raise ConfigError(f"setting {_STORAGE} must be a Storage connection string")
        return StorageAccount(text)
    account = _text(env, f"{_STORAGE}__accountName", "")
    uris = {service: _text(env, f"{_STORAGE}__{service}ServiceUri", "") for service in _SERVICES}
    client_id = _text(env, f"{_STORAGE}__clientId", "") or None
    credential = _text(env, f"{_STORAGE}__credential", "managedidentity").lower()
    if not account and not any(uris.values()):
        return StorageAccount(DEVELOPMENT_STORAGE)
    if credential != "managedidentity":
        raise ConfigError(f"setting {_STORAGE}__credential must be managedidentity, not {credential!r}")
    if account:
        if not re.fullmatch(r"[a-z0-9]{3,24}", account):
            raise ConfigError(f"setting {_STORAGE}__accountName: {account!r} is not a Storage account name")
        uris = {service: f"https://{account}.{service}.core.windows.net" for service in _SERVICES}
    for service, uri in uris.items():
        name = f"{_STORAGE}__{service}ServiceUri"
        if not uri:
            raise ConfigError(f"setting {name} is required when the account is given by service URIs")
        if urlsplit(uri).scheme != "https":
            raise ConfigError(f"setting {name} must be an https:// URL, not {uri!r}")
    return StorageAccount(
        None, uris["blob"].rstrip("/"), uris["queue"].rstrip("/"), uris["table"].rstrip("/"), client_id
    )


def storage_account(env: Mapping[str, str]) -> StorageAccount:
    """`AzureWebJobsStorage` alone (the host's own connection), readable while other settings are not."""
    return _storage(env)


_POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")


def _pools(env: Mapping[str, str], allowed: set[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`MAIL_SENDER_POOLS`: `name: a@x, b@x; other: c@x, d@x`, each member an allowed sender."""
    name = "MAIL_SENDER_POOLS"
    pools: dict[str, tuple[str, ...]] = {}
    for part in _text(env, name, "").split(";"):
        if not part.strip():
            continue
        pool, colon, members = part.partition(":")
        pool = pool.strip().lower()
        if not colon or not _POOL_NAME.match(pool):
            raise ConfigError(f"setting {name}: {part.strip()!r} is not `name: mailbox, mailbox` (names: a-z 0-9 -)")
        if pool in pools:
            raise ConfigError(f"setting {name}: pool {pool!r} is defined twice")
        addresses = tuple(dict.fromkeys(_address(name, m.strip()) for m in members.split(",") if m.strip()))
        if not addresses:
            raise ConfigError(f"setting {name}: pool {pool!r} has no mailboxes")
        for address in addresses:
            if address not in allowed:
                raise ConfigError(f"setting {name}: {address} (pool {pool!r}) is not in MAIL_ALLOWED_SENDERS")
        pools[pool] = addresses
    return tuple(pools.items())


def _recipient_domains(env: Mapping[str, str], senders: set[str]) -> set[str]:
    """MAIL_ALLOWED_RECIPIENT_DOMAINS: a comma list of domains, or `*` for any; unset or empty, the senders'
    own domains (a typo in a recipient's domain never mails outside the organisation)."""
    given = [d.strip().lower() for d in _text(env, "MAIL_ALLOWED_RECIPIENT_DOMAINS", "").split(",") if d.strip()]
    if ANY_DOMAIN in given:
        if len(given) > 1:
            raise ConfigError("setting MAIL_ALLOWED_RECIPIENT_DOMAINS: `*` (any domain) stands alone")
        return {ANY_DOMAIN}
    for domain in given:
        if not DOMAIN.match(domain):
            raise ConfigError(f"setting MAIL_ALLOWED_RECIPIENT_DOMAINS: {domain!r} is not a domain")
    return set(given) or {address.rsplit("@", 1)[-1] for address in senders}


def load_settings(env: Mapping[str, str]) -> Settings:
    """Read and check every setting; raises ConfigError naming the first bad one."""
    mode = _choice(env, "GRAPH_AUTH_MODE", "keyvault", ("keyvault", "managed_identity"))
    keyvault = mode == "keyvault"
    sender = _address("MAIL_DEFAULT_SENDER", _text(env, "MAIL_DEFAULT_SENDER"))
    senders = {
        _address("MAIL_ALLOWED_SENDERS", s.strip())
        for s in _text(env, "MAIL_ALLOWED_SENDERS", sender).split(",")
        if s.strip()
    }
    allowed = senders | {sender}
    domains = _recipient_domains(env, allowed)
    return Settings(
        graph_auth_mode=mode,
        graph_tenant_id=_text(env, "GRAPH_TENANT_ID", None if keyvault else ""),
        graph_client_id=_text(env, "GRAPH_CLIENT_ID", None if keyvault else ""),
        key_vault_url=_https_url(env, "KEY_VAULT_URL") if keyvault else _text(env, "KEY_VAULT_URL", ""),
        graph_credential_secret_name=_text(env, "GRAPH_CREDENTIAL_SECRET_NAME", "graph-client-secret"),
        graph_credential_kind=_choice(env, "GRAPH_CREDENTIAL_KIND", "secret", ("secret", "certificate")),
        azure_client_id=_text(env, "AZURE_CLIENT_ID", "") or None,
        azure_authority_host=_https_url(env, "AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com"),
        graph_base_url=_https_url(env, "GRAPH_BASE_URL", "https://graph.microsoft.com/v1.0"),
        key_vault_verify_challenge_resource=_bool(env, "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", True),
        mail_default_sender=sender,
        mail_allowed_senders=frozenset(allowed),
        mail_allowed_recipient_domains=frozenset(domains),
        storage=_storage(env),
        notify_config=str(APP_ROOT / _text(env, "NOTIFY_CONFIG", "config/notify.yaml")),
        alert_digest_schedule=_schedule(env, "ALERT_DIGEST_SCHEDULE", "0 0 * * * *"),
        mailbox_digest_schedule=_schedule(env, "MAILBOX_DIGEST_SCHEDULE", "0 0 7 * * 1-5"),
        digest_grace_minutes=_int(env, "DIGEST_SCHEDULE_GRACE_MINUTES", 60, 0, 7 * 24 * 60),
        audit_recipients=_choice(env, "AUDIT_RECIPIENTS", "hashed", ("hashed", "plain")),
        send_lease_seconds=_int(env, "MAIL_SEND_LEASE_SECONDS", 120, 5, 3600),
        mail_delivery_mode=_choice(env, "MAIL_DELIVERY_MODE", "auto", tuple(DELIVERY_MODES)),
        mail_max_message_bytes=_int(
            env, "MAIL_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES, MAX_MAX_MESSAGE_BYTES
        ),
        library_log_level=_choice(
            env, "LIBRARY_LOG_LEVEL", "warning", ("debug", "info", "warning", "error", "critical")
        ).upper(),
        budget_messages_per_minute=_int(env, "MAIL_BUDGET_MESSAGES_PER_MINUTE", 25, 0, 2000),
        budget_recipients_per_day=_int(env, "MAIL_BUDGET_RECIPIENTS_PER_DAY", 9000, 0, 10_000_000),
        budget_alert_reserve_percent=_int(env, "MAIL_BUDGET_ALERT_RESERVE_PERCENT", 20, 0, 90),
        mail_priority_senders=frozenset(
            _address("MAIL_PRIORITY_SENDERS", s.strip())
            for s in _text(env, "MAIL_PRIORITY_SENDERS", "").split(",")
            if s.strip()
        ),
        mail_sender_pools=_pools(env, allowed),
        mail_queue_blob_prefixes=_blob_prefixes(env, "MAIL_QUEUE_BLOB_PREFIXES"),
        mail_api_blob_prefixes=_blob_prefixes(env, "MAIL_API_BLOB_PREFIXES"),
    )


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process's settings, read once from the environment."""
    return load_settings(os.environ)
