"""The Graph credential, built from the Function App's managed identity.

`keyvault` mode: managed identity -> Key Vault secret (a client secret, or a PEM/PFX certificate) -> a
client-secret or certificate credential for the Graph app registration. The secret is cached for
`SECRET_TTL_SECONDS` and re-read once when Entra answers `invalid_client`, so a rotated secret is picked
up without a restart. `managed_identity` mode: the managed identity itself holds the Graph app role.
The secret never leaves this module, and never reaches a log or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import time
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import AccessToken
from azure.core.exceptions import AzureError, ClientAuthenticationError
from azure.identity.aio import CertificateCredential, ClientSecretCredential, ManagedIdentityCredential
from azure.keyvault.secrets.aio import SecretClient

from .config import Settings
from .loop_cache import LoopCache

SECRET_TTL_SECONDS = 3600
SOURCE_SECRET_TTL_SECONDS = 300  # alert sources' bearer/HMAC secrets; a mismatch re-reads sooner
FAILED_SECRET_TTL_SECONDS = 30  # a secret that could not be read is not tried again sooner than this
GRAPH_SCOPE_SUFFIX = "/.default"
# Entra's answers for a secret or certificate that is wrong, expired or removed: worth one re-read.
_STALE_CREDENTIAL = ("invalid_client", "AADSTS7000215", "AADSTS7000222", "AADSTS700027", "AADSTS700024")


class CredentialError(Exception):
    """The Graph credential could not be obtained; the message is safe to log (no secret in it)."""


class VaultSecrets:
    """Named Key Vault secrets read with the managed identity, each cached for `ttl` seconds."""

    def __init__(self, settings: Settings, ttl: float = SOURCE_SECRET_TTL_SECONDS) -> None:
        if not settings.key_vault_url:
            raise CredentialError("KEY_VAULT_URL is not set, so no secret can be read")
        self._identity = ManagedIdentityCredential(client_id=settings.azure_client_id)
        self._vault = SecretClient(
            settings.key_vault_url,
            self._identity,
            verify_challenge_resource=settings.key_vault_verify_challenge_resource,
        )
        self._ttl = ttl
        self._cache: dict[str, tuple[str, float]] = {}
        self._failures: dict[str, tuple[CredentialError, float]] = {}

    async def get(self, name: str, refresh: bool = False) -> str:
        """The secret's current value; from the cache unless it is older than the TTL or `refresh`."""
        cached = self._cache.get(name)
        if cached is not None and not refresh and time.monotonic() - cached[1] < self._ttl:
            return cached[0]
        failed = self._failures.get(name)
        if failed is not None and time.monotonic() - failed[1] < FAILED_SECRET_TTL_SECONDS:
            raise failed[0]  # a missing secret is not asked for again on every request
        try:
            secret = await self._vault.get_secret(name)
            if not secret.value:
                raise CredentialError(f"Key Vault secret {name!r} is empty")
        except (AzureError, CredentialError) as error:
            status = getattr(error, "status_code", None)
            failure = (
                error
                if isinstance(error, CredentialError)
                else CredentialError(
                    f"cannot read Key Vault secret {name!r} ({type(error).__name__}"
                    f"{f', HTTP {status}' if status else ''})"
                )
            )
            self._failures[name] = (failure, time.monotonic())
            raise failure from None
        self._failures.pop(name, None)
        self._cache[name] = (secret.value, time.monotonic())
        return secret.value

    def age(self, name: str) -> float:
        """Seconds since the secret was read (infinite when it never was)."""
        cached = self._cache.get(name)
        return time.monotonic() - cached[1] if cached else math.inf

    async def close(self) -> None:
        await self._vault.close()
        await self._identity.close()


_vaults: LoopCache[VaultSecrets] = LoopCache()


def vault_secrets(settings: Settings) -> VaultSecrets:
    """This event loop's cached reader of source-authentication secrets."""
    return _vaults.get(settings, lambda: VaultSecrets(settings))


class KeyVaultGraphCredential:
    """An async token credential for Graph whose client secret or certificate lives in Key Vault."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._secrets = VaultSecrets(settings, ttl=0)  # the TTL of the Graph credential is kept here
        self._inner: ClientSecretCredential | CertificateCredential | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def _credential(self, refresh: bool = False) -> ClientSecretCredential | CertificateCredential:
        async with self._lock:
            stale = time.monotonic() - self._loaded_at > SECRET_TTL_SECONDS
            if self._inner is None or refresh or stale:
                value = await self.read_secret()
                previous, self._inner = self._inner, self._build(value)
                self._loaded_at = time.monotonic()
                if previous is not None:
                    await previous.close()
            return self._inner

    async def read_secret(self) -> str:
        """The Graph credential from Key Vault."""
        return await self._secrets.get(self._settings.graph_credential_secret_name, refresh=True)

    def _build(self, value: str) -> ClientSecretCredential | CertificateCredential:
        settings = self._settings
        common: dict[str, Any] = {"authority": settings.azure_authority_host}
        if settings.graph_credential_kind == "secret":
            return ClientSecretCredential(settings.graph_tenant_id, settings.graph_client_id, value, **common)
        if "-----BEGIN" in value:
            data = value.encode()
        else:
            try:
                data = base64.b64decode(value, validate=True)  # Key Vault keeps a PFX as base64
            except (binascii.Error, ValueError):
                raise CredentialError("the Key Vault certificate is neither PEM nor base64 PFX") from None
        return CertificateCredential(
            settings.graph_tenant_id, settings.graph_client_id, certificate_data=data, **common
        )

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        credential = await self._credential()
        try:
            return await credential.get_token(*scopes, **kwargs)
        except ClientAuthenticationError as error:
            if not any(marker in str(error) for marker in _STALE_CREDENTIAL):
                raise
        credential = await self._credential(refresh=True)  # rotated in Key Vault? read it once more
        return await credential.get_token(*scopes, **kwargs)

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
        await self._secrets.close()

    async def __aenter__(self) -> KeyVaultGraphCredential:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


def graph_credential(settings: Settings) -> KeyVaultGraphCredential | ManagedIdentityCredential:
    """The credential Graph calls use, for the configured mode."""
    if settings.graph_auth_mode == "managed_identity":
        return ManagedIdentityCredential(client_id=settings.azure_client_id)
    return KeyVaultGraphCredential(settings)


def graph_scope(settings: Settings) -> str:
    """The Graph root's `.default` scope: `https://graph.microsoft.com/.default`, or a national cloud's."""
    parts = urlsplit(settings.graph_base_url)
    return f"{parts.scheme}://{parts.netloc}{GRAPH_SCOPE_SUFFIX}"
