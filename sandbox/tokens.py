"""Access tokens the sandbox issues and checks: signed JWTs with Entra's app-token claims.

Signed with a key kept per data directory (HS256), so checking a token costs no lookup and a token from
another sandbox, or a tampered one, is refused.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

GRAPH = "https://graph.microsoft.com"
VAULT = "https://vault.azure.net"
RESOURCES = {GRAPH, VAULT}


class TokenRejected(Exception):
    """A token that must not be accepted; the message is what Graph would say."""


@dataclass(frozen=True)
class Caller:
    """Who a valid token speaks for."""

    client_id: str
    roles: tuple[str, ...]
    tenant_id: str


def resource_of(scope: str, origin: str) -> str | None:
    """`https://graph.microsoft.com/.default` -> `https://graph.microsoft.com`; None for what we don't serve.

    The sandbox's own origin names Graph too, the way a national cloud's Graph root does, so a client whose
    GRAPH_BASE_URL points here derives its scope from that URL like everywhere else.
    """
    resource = scope.strip().removesuffix("/.default").rstrip("/")
    if resource.lower() == origin.lower():
        return GRAPH
    return resource if resource in RESOURCES else None


def issue(
    key: bytes, *, tenant_id: str, client_id: str, resource: str, roles: list[str], lifetime: int, issuer: str
) -> tuple[str, int]:
    """Sign a token; returns it and its expiry (epoch seconds)."""
    issued = int(time.time())
    expires = issued + lifetime
    claims = {
        "aud": resource,
        "iss": issuer,
        "iat": issued,
        "nbf": issued,
        "exp": expires,
        "appid": client_id,
        "azp": client_id,
        "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, client_id)),
        "sub": client_id,
        "tid": tenant_id,
        "idtyp": "app",
        "roles": roles if resource == GRAPH else [],
        "uti": uuid.uuid4().hex,
        "ver": "1.0",
    }
    return jwt.encode(claims, key, algorithm="HS256"), expires


def verify(key: bytes, authorization: str | None, resource: str) -> Caller:
    """Check a bearer token for a resource; raises TokenRejected with Graph's wording."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise TokenRejected("Access token is empty.")
    token = authorization[7:].strip()
    try:
        claims = jwt.decode(
            token, key, algorithms=["HS256"], audience=resource, options={"require": ["exp", "aud", "appid"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenRejected("Lifetime validation failed, the token is expired.") from None
    except jwt.InvalidAudienceError:
        raise TokenRejected("Invalid audience.") from None
    except jwt.InvalidTokenError:
        raise TokenRejected("IDX14100: JWT is not well formed, or its signature is invalid.") from None
    return Caller(str(claims["appid"]), tuple(claims.get("roles") or ()), str(claims.get("tid", "")))
