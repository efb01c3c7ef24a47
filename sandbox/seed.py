"""The seed: the tenant, users, app registrations, managed identities and vault a sandbox starts from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_SEED = Path(__file__).with_name("default_seed.json")
GRAPH_ROLES = {"Mail.Send", "Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic", "User.Read.All"}


class SeedError(ValueError):
    """A seed that cannot be loaded; the message names the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Tenant(_Model):
    id: str
    domain: str


class ExchangeLimits(_Model):
    """Exchange Online's sending limits for a mailbox; `null` lifts one limit, `enabled: false` all of them
    (with the NDRs for unknown internal recipients)."""

    enabled: bool = True
    messages_per_minute: int | None = Field(30, alias="messagesPerMinute", ge=1)
    recipients_per_day: int | None = Field(10_000, alias="recipientsPerDay", ge=1)
    max_message_size_mb: float | None = Field(35, alias="maxMessageSizeMB", gt=0)
    # Outlook's upload sessions (not Exchange's transport): bytes an app may upload into the mailbox in any 5
    # minutes; `enabled: false` leaves it on, `null` lifts it
    upload_mb_per_5_minutes: float | None = Field(150, alias="uploadMBPer5Minutes", gt=0)


class SeedUser(_Model):
    user_principal_name: str = Field(alias="userPrincipalName")
    display_name: str = Field("", alias="displayName")
    id: str | None = None
    messages: list[dict[str, Any]] = []
    exchange: ExchangeLimits | None = None  # the fields it sets override the tenant's for this mailbox

    @field_validator("user_principal_name")
    @classmethod
    def _upn_has_at(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError("must look like name@domain")
        return value.lower()


class SeedApp(_Model):
    client_id: str = Field(alias="clientId")
    display_name: str = Field("", alias="displayName")
    secrets: list[str] = []
    certificates: list[str] = []
    roles: list[str] = []
    mailbox_scope: list[str] | None = Field(None, alias="mailboxScope")

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, roles: list[str]) -> list[str]:
        unknown = sorted(set(roles) - GRAPH_ROLES)
        if unknown:
            raise ValueError(f"unknown Graph application roles {unknown}")
        return roles


class SeedIdentity(_Model):
    client_id: str = Field(alias="clientId")
    roles: list[str] = []
    mailbox_scope: list[str] | None = Field(None, alias="mailboxScope")


class SeedKeyVault(_Model):
    secrets: dict[str, str] = {}
    readers: list[str] = []


class Seed(_Model):
    tenant: Tenant
    users: list[SeedUser] = []
    apps: list[SeedApp] = []
    managed_identities: list[SeedIdentity] = Field([], alias="managedIdentities")
    key_vault: SeedKeyVault = Field(default_factory=SeedKeyVault, alias="keyVault")
    identity_header: str = Field("sandbox-identity-header", alias="identityHeader")
    token_lifetime_seconds: int = Field(3599, alias="tokenLifetimeSeconds", ge=1, le=86400)
    exchange: ExchangeLimits = Field(default_factory=ExchangeLimits)

    def limits_of(self, user: SeedUser) -> ExchangeLimits:
        """A mailbox's sending limits: the tenant's, with the user's own fields over them."""
        if user.exchange is None:
            return self.exchange
        return self.exchange.model_copy(update=user.exchange.model_dump(include=user.exchange.model_fields_set))


def parse_seed(raw: Any) -> Seed:
    """Validate a seed document (already decoded), naming the first bad field."""
    try:
        return Seed.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "seed"
        raise SeedError(f"seed {where}: {first['msg']}") from None


def load_seed(path: Path | None) -> tuple[Seed, dict[str, Any]]:
    """Read a JSON or YAML seed file; the default seed when no path is given."""
    path = path or DEFAULT_SEED
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SeedError(f"cannot read seed file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text) if path.suffix in {".yaml", ".yml"} else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SeedError(f"seed file {path} is not valid: {exc}") from None
    return parse_seed(raw), raw
