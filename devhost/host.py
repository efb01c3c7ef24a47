"""The host core: app settings, indexing the app once, and invoking functions with their bindings."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

log = logging.getLogger("devhost")
_SETTING = re.compile(r"%([A-Za-z0-9_.:-]+)%")


class HostError(Exception):
    """The app cannot be hosted as configured; the message says what to fix."""


def load_local_settings(path: Path) -> dict[str, str]:
    """`Values` of local.settings.json into the environment; variables already set win (they override)."""
    if not path.exists():
        raise HostError(f"{path} is missing: copy local.settings.json.example to it")
    try:
        values = json.loads(path.read_text())["Values"]
    except (ValueError, KeyError, TypeError) as error:
        raise HostError(f"{path} is not a local settings file with Values: {error}") from None
    for name, value in values.items():
        os.environ.setdefault(name, str(value))
    return {name: os.environ[name] for name in values}


def load_host_json(app_dir: Path) -> dict[str, Any]:
    path = app_dir / "host.json"
    if not path.exists():
        return {}
    host: dict[str, Any] = json.loads(path.read_text())
    return host


def resolve(text: str, env: Mapping[str, str] | None = None) -> str:
    """Replace `%SETTING%` placeholders with app settings, as the host does for binding properties."""
    env = os.environ if env is None else env

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise HostError(f"binding refers to %{name}%, but no app setting {name} exists")
        return env[name]

    return _SETTING.sub(value, text)


def connection_string(setting: str | None) -> str:
    """The Storage connection string a binding's `connection` names (default AzureWebJobsStorage)."""
    name = setting or "AzureWebJobsStorage"
    value = os.environ.get(name) or os.environ.get(f"{name}__connectionString") or ""
    if not value:
        raise HostError(f"binding connection {name!r} names no app setting")
    if value.replace(" ", "").lower() == "usedevelopmentstorage=true":
        from .azurite import ACCOUNT_KEY

        base = "http://127.0.0.1:{}/devstoreaccount1"
        value = (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={base.format(10000)};QueueEndpoint={base.format(10001)};"
            f"TableEndpoint={base.format(10002)};"
        )
    return value


@dataclass
class HostedFunction:
    """One indexed function: its trigger, its other bindings and the user's callable."""

    name: str
    trigger: dict[str, Any]
    bindings: list[dict[str, Any]]
    user_function: Callable[..., Any]

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return [b for b in self.bindings if _direction(b) == "out" and b["type"] == "queue"]


def _direction(binding: dict[str, Any]) -> str:
    direction = binding.get("direction")
    return str(getattr(direction, "name", direction)).lower()


def index_app(module_name: str, app_dir: Path) -> list[HostedFunction]:
    """Import the app and index it once (`get_functions()` may be called once per app object)."""
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    module = importlib.import_module(module_name)
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionApp)]
    if len(apps) != 1:
        raise HostError(f"{module_name} must define exactly one FunctionApp; found {len(apps)}")
    hosted = []
    for function in apps[0].get_functions():
        trigger = function.get_trigger()
        name = function.get_function_name()
        if trigger is None or name is None:
            raise HostError(f"{module_name}: a function without a name or trigger cannot be hosted")
        hosted.append(
            HostedFunction(
                name=name,
                trigger=trigger.get_dict_repr(),
                bindings=[b.get_dict_repr() for b in function.get_bindings() if b is not trigger],
                user_function=function.get_user_function(),
            )
        )
    return hosted


def disabled(function_name: str) -> bool:
    """The host's `AzureWebJobs.<name>.Disabled` setting: `true` (or 1) keeps a function from running."""
    return os.environ.get(f"AzureWebJobs.{function_name}.Disabled", "").strip().lower() in {"true", "1"}


class OutValue(func.Out[Any]):
    """An output binding's value, set by the function and sent by the host after it returns."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


@dataclass
class Invoker:
    """Runs functions as the Python worker does: async ones on the loop, sync ones in a thread."""

    counts: dict[str, int] = field(default_factory=dict)

    async def invoke(self, function: HostedFunction, trigger_value: Any) -> Any:
        invocation_id = str(uuid.uuid4())
        outputs = {b["name"]: OutValue() for b in function.outputs}
        kwargs = {function.trigger["name"]: trigger_value, **outputs}
        started = time.perf_counter()
        log.info("Executing 'Functions.%s' (Id=%s)", function.name, invocation_id)
        try:
            if inspect.iscoroutinefunction(function.user_function):
                result = await function.user_function(**kwargs)
            else:
                result = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: function.user_function(**kwargs)
                )
            for binding in function.outputs:
                await send_output(binding, outputs[binding["name"]].get())
        except Exception as error:
            log.error(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%.0fms): %s: %s",
                function.name,
                invocation_id,
                (time.perf_counter() - started) * 1000,
                type(error).__name__,
                error,
            )
            raise
        self.counts[function.name] = self.counts.get(function.name, 0) + 1
        log.info(
            "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)",
            function.name,
            invocation_id,
            (time.perf_counter() - started) * 1000,
        )
        return result


async def send_output(binding: dict[str, Any], value: Any) -> None:
    """A queue output binding: a message, or one per item of a list; dicts as JSON; base64 like the host."""
    if value is None:
        return
    items = value if isinstance(value, list) else [value]
    async with QueueClient.from_connection_string(
        connection_string(binding.get("connection")),
        resolve(binding["queueName"]),
        message_encode_policy=TextBase64EncodePolicy(),
    ) as queue:
        with contextlib.suppress(ResourceExistsError):
            await queue.create_queue()
        for item in items:
            text = item.decode() if isinstance(item, bytes) else item if isinstance(item, str) else json.dumps(item)
            await queue.send_message(text)
