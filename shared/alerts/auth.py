"""Source authentication beyond the function key, as the routing file's `sources:` asks for it.

- `bearer_secret`: the request carries `Authorization: Bearer <the secret's value>`.
- `hmac_secret`: the request carries the hex HMAC-SHA256 of its body in `hmac_header` (Grafana's
  `X-Grafana-Alerting-Signature` by default). With `timestamp_header` set, the signed text is
  `<timestamp>:<body>` and the timestamp (Unix seconds) must lie within `replay_window` of now.
  A signed request is admitted with its signature (`Signed`), which the caller remembers for as long as a
  replay of it would pass (`shared.store.alert_replays`), so a captured request is not taken twice.

Secrets are Key Vault secret names, read through the managed identity and cached; when a request fails
against a cached secret that is more than a minute old, the secret is read once more (it may have been
rotated). Comparisons take constant time, and no answer says which part was wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..errors import AppError, Forbidden, Unauthorized, Unavailable
from ..routing_file import NotifyConfig, SourceAuth
from .intake import apparent_sources, detect_source

REREAD_AFTER_SECONDS = 60
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")

log = logging.getLogger("notifier.alerts")


@dataclass(frozen=True)
class Signed:
    """A request's valid HMAC signature for one source, and how many seconds a replay of it would pass."""

    source: str
    signature: str
    hold: float


@dataclass(frozen=True)
class Admission:
    """The source a request's alerts belong to, and the signatures it passed with."""

    source: str
    signed: tuple[Signed, ...]


class SecretSource(Protocol):
    async def get(self, name: str, refresh: bool = False) -> str: ...

    def age(self, name: str) -> float: ...


def _signature_base(auth: SourceAuth, headers: Mapping[str, str], body: bytes, now: float) -> bytes:
    """What the HMAC covers; raises 401 for a missing, malformed or stale timestamp."""
    if auth.timestamp_header is None:
        return body
    stamp = headers.get(auth.timestamp_header.lower(), "").strip()
    if not _UNIX_SECONDS.fullmatch(stamp):  # ASCII digits only: `²` is a digit to isdigit(), not to int()
        raise Unauthorized(f"The request needs a {auth.timestamp_header} header with a Unix timestamp.")
    if abs(now - int(stamp)) > auth.replay_seconds():
        raise Unauthorized("The request's timestamp is outside the replay window.")
    return stamp.encode() + b":" + body


def _presented(auth: SourceAuth, headers: Mapping[str, str]) -> str:
    if auth.bearer_secret:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("The request needs an Authorization: Bearer header.")
        return token.strip()
    signature = headers.get(auth.hmac_header.lower(), "").strip().lower()
    if not signature:
        raise Unauthorized(f"The request needs a {auth.hmac_header} header.")
    return signature


def _matches(auth: SourceAuth, presented: str, base: bytes, secret: str) -> bool:
    expected = secret if auth.bearer_secret else hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), presented.encode())


async def authenticate(
    source: str,
    auth: SourceAuth | None,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Callable[[], SecretSource],
    now: float,
) -> Signed | None:
    """Pass (with the signature, for an HMAC), or raise 401 (503 when the secret cannot be read). `headers`
    have lower-case names."""
    if auth is None:
        return None
    presented = _presented(auth, headers)
    base = _signature_base(auth, headers, body, now)
    name = auth.bearer_secret or auth.hmac_secret or ""
    passed = Signed(source, presented, auth.remembered_seconds()) if auth.hmac_secret else None
    try:
        reader = secrets()
        if _matches(auth, presented, base, await reader.get(name)):
            return passed
        if reader.age(name) > REREAD_AFTER_SECONDS and _matches(
            auth, presented, base, await reader.get(name, refresh=True)
        ):
            return passed
    except AppError:
        raise
    except Exception as error:
        # the log says which secret and why; the caller only learns that it is our side that fails
        reason = str(error) if type(error).__module__.startswith("shared.") else type(error).__name__
        log.error("alert source %s cannot be authenticated: %s", source, reason[:300])
        raise Unavailable(f"The {source} source cannot be authenticated now; try again later.") from None
    raise Unauthorized(f"The {source} request's credentials are not valid.")


async def admit_source(
    named: str | None,
    payload: object,
    config: NotifyConfig,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Callable[[], SecretSource],
    now: float,
) -> Admission:
    """The source a request's alerts belong to (the one in the URL, else the detected one) and the HMAC
    signatures it passed with, once the request has passed the authentication of that source and of every
    source the payload looks like. With `require_source_auth`, a source the routing file gives no
    authentication is refused outright (403)."""
    source = named or detect_source(payload)
    owed = sorted({source} | apparent_sources(payload))
    if config.require_source_auth:
        open_sources = [name for name in owed if config.source_auth(name) is None]
        if open_sources:
            raise Forbidden(
                f"The routing file requires source authentication, and gives none for {', '.join(open_sources)}."
            )
    signed = [await authenticate(name, config.source_auth(name), headers, body, secrets, now) for name in owed]
    return Admission(source, tuple(s for s in signed if s is not None))
