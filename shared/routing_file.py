"""The routing file (`NOTIFY_CONFIG`): receivers, the route tree, source authentication and mailbox digests:
its schema, its loader (errors name the file, the path and the line), and the check against the mail settings.
Alerts route with it (`shared.alerts.routing`), digests take their definitions from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import ConfigError, Settings
from .schedules import Schedule, parse_receiver_schedule, parse_schedule, parse_zone
from .text import ADDRESS, CONTROL

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|(\S*))\s*$')
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELD_FIRST = re.compile(r"^([a-z_]+): (.*)$", re.DOTALL)


def parse_duration(text: str) -> float:
    """Prometheus durations: `30s`, `5m`, `4h`, `1d`; seconds."""
    match = _DURATION.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 4h or 1d")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Matcher:
    label: str
    operator: str
    value: str

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.operator == "=":
            return actual == self.value
        if self.operator == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.operator == "=~" else not found


def parse_matcher(text: str) -> Matcher:
    match = _MATCHER.match(text)
    if not match:
        raise ValueError(f'{text!r} is not a matcher like severity="critical" or team=~"db|web"')
    label, operator, quoted, bare = match.groups()
    value = quoted.encode().decode("unicode_escape") if quoted is not None else bare
    if operator in {"=~", "!~"}:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"{text!r}: the regular expression is invalid: {error}") from None
    return Matcher(label, operator, value)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Receiver(_Model):
    """Who gets a route's alerts, and how they are grouped and sent."""

    name: str = Field(min_length=1)
    to: list[str] = Field(min_length=1)
    cc: list[str] = []
    sender: str | None = None
    sender_pool: str | None = None  # a pool of MAIL_SENDER_POOLS instead of one sender
    mode: Literal["immediate", "digest"] = "immediate"
    group_by: list[str] = ["alertname"]
    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"
    send_resolved: bool = True
    template: str = "default"
    max_groups_per_interval: int = Field(20, ge=1, le=1000)  # group notices mailed per group_interval; then a summary
    regroup: bool = False  # true: group the notifications of pre-grouping sources (Alertmanager, Grafana) again
    schedule: str | None = None  # a digest receiver's own cron (5 or 6 fields); else ALERT_DIGEST_SCHEDULE (UTC)
    timezone: str | None = None  # IANA zone of its mails' dates and its own schedule; UTC when left out

    @field_validator("to", "cc")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        for value in values:
            if not ADDRESS.match(value):
                raise ValueError(f"{value!r} is not an email address")
        return [v.lower() for v in values]

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str | None) -> str | None:
        if value is not None and not ADDRESS.match(value):
            raise ValueError(f"{value!r} is not an email address")
        return value.lower() if value else value

    @field_validator("group_by")
    @classmethod
    def _labels(cls, values: list[str]) -> list[str]:
        for value in values:
            if value != "..." and not _LABEL.match(value):
                raise ValueError(f"{value!r} is not a label name (or '...' for all labels)")
        return values

    @field_validator("group_wait", "group_interval", "repeat_interval")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    def seconds(self, name: Literal["group_wait", "group_interval", "repeat_interval"]) -> float:
        return parse_duration(getattr(self, name))

    @model_validator(mode="after")
    def _schedule(self) -> Receiver:
        parse_receiver_schedule(self.mode, self.schedule, self.timezone)
        return self

    def own_schedule(self) -> Schedule | None:
        """The receiver's own digest schedule, or None to follow ALERT_DIGEST_SCHEDULE."""
        return parse_receiver_schedule(self.mode, self.schedule, self.timezone)

    @property
    def zone(self) -> ZoneInfo:
        """The zone its mails give dates in (`timezone`, else UTC)."""
        return parse_zone(self.timezone, "timezone")


class Route(_Model):
    receiver: str | None = None
    matchers: list[str] = []
    continue_: bool = Field(False, alias="continue")
    routes: list[Route] = []

    @field_validator("matchers")
    @classmethod
    def _matchers(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_matcher(value)
        return values

    def parsed_matchers(self) -> list[Matcher]:
        return [parse_matcher(m) for m in self.matchers]


class SourceAuth(_Model):
    """Authentication of one alert source beyond the function key; secrets are Key Vault secret names.
    `replay_window`: with a timestamp header, how far the timestamp may be from now (default 5m); without one,
    how long a signature is remembered to refuse its replay (default 24h)."""

    bearer_secret: str | None = None
    hmac_secret: str | None = None
    hmac_header: str = "X-Grafana-Alerting-Signature"
    timestamp_header: str | None = None
    replay_window: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SourceAuth:
        if bool(self.bearer_secret) == bool(self.hmac_secret):
            raise ValueError("set exactly one of bearer_secret and hmac_secret")
        if self.replay_seconds() < 1:
            raise ValueError("replay_window must be at least 1s")
        return self

    def replay_seconds(self) -> float:
        """The replay window in seconds."""
        default = "5m" if self.timestamp_header else "24h"
        return parse_duration(self.replay_window or default)

    def remembered_seconds(self) -> float:
        """How long a signature must be remembered so that no replay of it is accepted: a timestamp is good
        from `replay_window` before it to `replay_window` after it; without one, the replay window."""
        return self.replay_seconds() * (2 if self.timestamp_header else 1)


class MailboxDigest(_Model):
    """A summary of a shared mailbox's folders: what arrived since the last digest (`report: new`, read with
    delta queries) or what is unread now (`report: waiting`); the messages reported can be tagged (`tag`) or
    marked read (`mark_read`) after the mail. Without `report` a digest is the tagging digest of earlier
    versions: unread mail not yet tagged with `category` (default `Digested`), tagged once reported."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    mailbox: str
    sender: str | None = None
    report: Literal["new", "waiting"] | None = None
    sender_pool: str | None = None
    folders: list[str] = Field(["Inbox"], min_length=1)
    include_child_folders: bool = True
    unread_only: bool = True
    since_last_run: bool = False
    horizon: str = "7d"  # report: new, first run: mail received this long before it
    to: list[str] = Field(min_length=1)
    max_items: int = Field(25, ge=1, le=500)
    tag: str | None = Field(None, min_length=1, max_length=255)
    category: str | None = Field(None, min_length=1, max_length=255)  # the tag's earlier name
    mark_read: bool = False
    schedule: str | None = None  # own cron (5 or 6 fields); else MAILBOX_DIGEST_SCHEDULE (UTC)
    timezone: str | None = None  # IANA zone of its mail's dates and its own schedule; UTC when left out

    @model_validator(mode="after")
    def _kind(self) -> MailboxDigest:
        if self.tag is not None and self.category is not None:
            raise ValueError("set tag or its earlier name category, not both")
        if self.report == "waiting" and not self.unread_only:
            raise ValueError("unread_only: report: waiting reports unread mail; use report: new for all new mail")
        if self.report == "new" and self.since_last_run:
            raise ValueError("since_last_run: report: new always reports what arrived since the last run")
        if self.since_last_run and self.tagging is None:
            raise ValueError("since_last_run: only a digest that tags (tag:) reads from its last run")
        parse_duration(self.horizon)
        parse_schedule(self.schedule, self.timezone)
        return self

    @property
    def kind(self) -> Literal["new", "waiting"]:
        return self.report or "waiting"

    @property
    def tagging(self) -> str | None:
        """The category put on reported messages: `tag`, or for a digest without `report` its `category`
        (`Digested` by default, as before)."""
        if self.report is None:
            return self.tag or self.category or "Digested"
        return self.tag or self.category

    @property
    def patches(self) -> bool:
        """Whether reported messages are changed after the mail (tagged or marked read)."""
        return self.tagging is not None or self.mark_read

    def own_schedule(self) -> Schedule | None:
        """The digest's own schedule, or None to follow MAILBOX_DIGEST_SCHEDULE."""
        return parse_schedule(self.schedule, self.timezone)

    @property
    def zone(self) -> ZoneInfo:
        """The zone its mail gives dates in (`timezone`, else UTC)."""
        return parse_zone(self.timezone, "timezone")

    @field_validator("mailbox")
    @classmethod
    def _mailbox(cls, value: str) -> str:
        if not ADDRESS.match(value):
            raise ValueError(f"{value!r} is not an email address")
        return value.lower()

    @field_validator("to")
    @classmethod
    def _recipients(cls, values: list[str]) -> list[str]:
        return Receiver._addresses(values)

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str | None) -> str | None:
        return Receiver._sender(value)

    @field_validator("folders")
    @classmethod
    def _folders(cls, values: list[str]) -> list[str]:
        """Folder paths like `Inbox` or `Inbox/Escalations` (display names, case-insensitive), or `*` for all."""
        for value in values:
            parts = value.split("/")
            if value != "*" and (any(not p.strip() or p != p.strip() for p in parts) or len(parts) > 10):
                raise ValueError(f"{value!r} is not a folder path like Inbox or Inbox/Escalations (or * for all)")
            if CONTROL.search(value) or len(value) > 1024:
                raise ValueError(f"{value!r} is not a folder path")
        return values


class NotifyConfig(_Model):
    receivers: list[Receiver] = Field(min_length=1)
    route: Route
    sources: dict[Literal["alertmanager", "grafana", "azuremonitor", "generic"], SourceAuth] = {}
    require_source_auth: bool = False  # refuse alerts of every source that `sources` gives no authentication
    digests: list[MailboxDigest] = []
    # a source's severity words beyond the built-in ones (shared.alerts.model.SEVERITY_WORDS), any letter case
    severity_map: dict[str, Literal["critical", "high", "warning", "info"]] = {}

    @field_validator("severity_map")
    @classmethod
    def _severity_words(cls, words: dict[str, str]) -> dict[str, str]:
        lowered = {word.strip().lower(): severity for word, severity in words.items()}
        if len(lowered) != len(words) or not all(lowered):
            raise ValueError("severity words must be non-empty and differ in more than letter case")
        return lowered

    @model_validator(mode="after")
    def _references(self) -> NotifyConfig:
        names = [r.name for r in self.receivers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"receiver names must be unique; repeated: {duplicates}")
        if self.route.receiver is None:
            raise ValueError("route.receiver: the root route needs a receiver")

        def check(route: Route, where: str) -> None:
            if route.receiver is not None and route.receiver not in names:
                raise ValueError(f"{where}.receiver: no receiver named {route.receiver!r}")
            for index, child in enumerate(route.routes):
                check(child, f"{where}.routes[{index}]")

        check(self.route, "route")
        digest_names = [d.name for d in self.digests]
        if len(set(digest_names)) != len(digest_names):
            raise ValueError("digest names must be unique")
        return self

    def receiver(self, name: str) -> Receiver:
        return next(r for r in self.receivers if r.name == name)

    def source_auth(self, source: str) -> SourceAuth | None:
        """The authentication a source must pass beyond the function key, if the file asks for any."""
        return next((auth for name, auth in self.sources.items() if name == source), None)


def _line_of(node: yaml.Node | None, location: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at a validation error's location, when it can be found."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in location:
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if key.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def load_notify_config(path: Path | str) -> NotifyConfig:
    """Read and validate the routing file; ConfigError names the file, the path and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"setting NOTIFY_CONFIG: cannot read {path}: {error.strerror}") from None
    try:
        raw = yaml.load(text, Loader=yaml.CSafeLoader)  # libyaml (in PyYAML's wheels): 10x the Python loader
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    try:
        return NotifyConfig.model_validate(raw if raw is not None else {})
    except ValidationError as error:
        first = error.errors()[0]
        location = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        message = str(first["msg"]).removeprefix("Value error, ")
        field = _FIELD_FIRST.match(message)  # a check across fields names the field it is about first
        if field:
            location, message = (*location, field.group(1)), field.group(2)
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in location).lstrip(".") or "(top)"
        line = _line_of(yaml.compose(text, Loader=yaml.CSafeLoader), location)  # parsed for nodes only on an error
        raise ConfigError(f"{path}{f' line {line}' if line else ''}: {where}: {message}") from None


@lru_cache(maxsize=4)
def notify_config(settings: Settings) -> NotifyConfig:
    """The routing file the settings name, loaded once and checked against them: every receiver must be able
    to send (MAIL_ALLOWED_SENDERS, MAIL_ALLOWED_RECIPIENT_DOMAINS), and source secrets need KEY_VAULT_URL."""
    config = load_notify_config(settings.notify_config)
    where = settings.notify_config
    senders = [("receiver", r.name, r.sender, r.sender_pool, r.to + r.cc) for r in config.receivers]
    senders += [("digest", d.name, d.sender, d.sender_pool, d.to) for d in config.digests]
    for kind, name, sender, pool, recipients in senders:
        address = sender or settings.mail_default_sender
        if pool is not None and (sender is not None or settings.sender_pool(pool) is None):
            problem = "names both sender and sender_pool" if sender else f"names sender_pool {pool!r}, which"
            problem += "" if sender else " MAIL_SENDER_POOLS does not define"
            raise ConfigError(f"{where}: {kind} {name!r} {problem}")
        if pool is None and not settings.may_send_as(address):
            raise ConfigError(f"{where}: {kind} {name!r} sends as {address}, which MAIL_ALLOWED_SENDERS does not allow")
        outside = next((r for r in recipients if not settings.may_mail(r)), None)
        if outside is not None:
            raise ConfigError(f"{where}: {kind} {name!r} mails {outside}, outside MAIL_ALLOWED_RECIPIENT_DOMAINS")
    if config.sources and not settings.key_vault_url:
        raise ConfigError(f"{where}: sources: source secrets are read from Key Vault, and KEY_VAULT_URL is not set")
    return config
