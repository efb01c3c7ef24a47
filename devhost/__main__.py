"""`python -m devhost`: run function_app.py the way the Functions host does, on Azurite and the sandbox."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from .host import (
    HostError,
    Invoker,
    connection_string,
    disabled,
    index_app,
    load_host_json,
    load_local_settings,
    resolve,
)
from .http import http_app
from .queues import QueueSettings, QueueTrigger
from .timers import TimerTrigger

log = logging.getLogger("devhost")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the devhost stops everything in one order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--app-dir", type=Path, default=Path.cwd())
    parser.add_argument("--app", default="function_app", help="module defining the FunctionApp")
    parser.add_argument("--settings", type=Path, help="local settings file (default: APP_DIR/local.settings.json)")
    parser.add_argument(
        "--lock-seconds",
        type=float,
        default=600,
        help="invisibility of a received queue message, renewed while it runs",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30,
        help="how long a stop waits for in-flight invocations before abandoning them",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("DEVHOST_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("azure", "httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app_dir = args.app_dir.resolve()
    os.chdir(app_dir)
    try:
        load_local_settings(args.settings or app_dir / "local.settings.json")
        host_json = load_host_json(app_dir)
        functions = [f for f in index_app(args.app, app_dir) if not disabled(f.name)]
        return asyncio.run(_serve(args, host_json, functions))
    except HostError as error:
        print(f"devhost: {error}", file=sys.stderr)
        return 2


async def _serve(args: argparse.Namespace, host_json: dict[str, Any], functions: list[Any]) -> int:
    invoker = Invoker()
    prefix = host_json.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    app, routes = http_app(functions, prefix, invoker)
    queue_settings = QueueSettings.from_host_json(host_json, args.lock_seconds)
    queues = [
        QueueTrigger(
            connection_string(f.trigger.get("connection")),
            resolve(f.trigger["queueName"]),
            _queue_function(invoker, f),
            queue_settings,
        )
        for f in functions
        if f.trigger_type == "queueTrigger"
    ]
    timers = [TimerTrigger(f, invoker) for f in functions if f.trigger_type == "timerTrigger"]
    unsupported = [f.name for f in functions if f.trigger_type not in {"httpTrigger", "queueTrigger", "timerTrigger"}]
    if unsupported:
        raise HostError(f"the devhost runs HTTP, queue and timer triggers; not {', '.join(unsupported)}")

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: gets TCP_NODELAY
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.host, args.port))
    except OSError as error:
        raise HostError(
            f"cannot listen on {args.host}:{args.port}: {error.strerror} (is another host running?)"
        ) from None
    origin = f"http://{args.host}:{listener.getsockname()[1]}"
    server = _Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=10))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    web = asyncio.ensure_future(server.serve(sockets=[listener]))
    while not server.started and not web.done():
        await asyncio.sleep(0.01)
    if web.done():
        web.result()
        return 1
    workers = [asyncio.ensure_future(q.run(stop)) for q in queues] + [
        asyncio.ensure_future(t.run(stop)) for t in timers
    ]
    print("Functions:")
    for route in routes:
        methods = ",".join(sorted(route.methods)) or "ALL"
        print(f"  {route.function.name}: [{methods}] {origin}{route.template}")
    for queue in queues:
        print(f"  queue trigger on {queue.queue_name}")
    for timer in timers:
        print(f"  {timer.function.name}: {timer.describe()}")
    print(f"DEVHOST READY {origin}", flush=True)

    await stop.wait()
    log.info("stopping: no new work; waiting up to %.0f s for in-flight invocations", args.shutdown_timeout)
    if workers:
        _, unfinished = await asyncio.wait(workers, timeout=args.shutdown_timeout)
        for task in unfinished:  # stuck (say, retrying storage that went away): abandoned, as the host does
            task.cancel()
        if unfinished:
            log.warning(
                "%d trigger(s) still busy after %.0f s; abandoned (their queue messages come back when "
                "their locks expire)",
                len(unfinished),
                args.shutdown_timeout,
            )
    server.should_exit = True
    await web
    shutdown = getattr(sys.modules.get("shared.functions"), "shutdown", None)
    if shutdown is not None:  # the app's own clean-up, when it offers one
        await shutdown()
    log.info("stopped")
    return 0


def _queue_function(invoker: Invoker, function: Any) -> Any:
    async def run(message: Any) -> None:
        await invoker.invoke(function, message)

    return run


if __name__ == "__main__":
    sys.exit(main())
