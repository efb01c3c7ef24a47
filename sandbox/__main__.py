"""`python -m sandbox`: serve the local Microsoft cloud stand-in over HTTPS."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
from pathlib import Path

import uvicorn

from .app import create_app
from .seed import SeedError, load_seed
from .state import Sandbox
from .store import Store
from .tls import ensure_tls


class _DroppedConnectionNoise(logging.Filter):
    """The dropped-connection fault abandons answers on purpose; uvicorn's complaint about it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


def client_environment(origin: str, data_dir: Path, store: Store) -> dict[str, str]:
    """What a client (the app, a test, a shell) needs to reach this sandbox with the real SDKs."""
    tenant = store.tenant()
    bundle = str((data_dir / "ca-bundle.pem").resolve())
    apps = store.db.execute("SELECT client_id FROM principals WHERE kind = 'app' ORDER BY rowid").fetchall()
    environment = {
        "SSL_CERT_FILE": bundle,
        "REQUESTS_CA_BUNDLE": bundle,
        "AZURE_AUTHORITY_HOST": origin,
        "GRAPH_BASE_URL": f"{origin}/v1.0",
        "KEY_VAULT_URL": origin,
        "IDENTITY_ENDPOINT": f"{origin}/msi/token",
        "IDENTITY_HEADER": store.identity_header(),
        "GRAPH_TENANT_ID": tenant.get("id", ""),
    }
    if apps:
        environment["GRAPH_CLIENT_ID"] = apps[0]["client_id"]
    return environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8790, help="0 picks a free port")
    parser.add_argument("--data", type=Path, default=Path(".sandbox"), help="state, CA and certificates")
    parser.add_argument("--seed", type=Path, help="JSON or YAML seed (default: the shipped default seed)")
    args = parser.parse_args(argv)

    try:
        seed, raw = load_seed(args.seed)
    except SeedError as error:
        print(f"sandbox: {error}", file=sys.stderr)
        return 2
    args.data.mkdir(parents=True, exist_ok=True)
    tls = ensure_tls(args.data)
    store = Store(args.data / "sandbox.db")
    if not store.is_seeded():
        store.reset(seed, raw)
    sandbox = Sandbox.create(store, raw)

    # IPPROTO_TCP explicitly: the event loop sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it small answers wait for the client's delayed ACK (40 ms each).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.host, args.port))
    except OSError as error:
        print(f"sandbox: cannot listen on {args.host}:{args.port}: {error.strerror}", file=sys.stderr)
        return 2
    port = listener.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    origin = f"https://{host}:{port}"
    environment = client_environment(origin, args.data, store)
    (args.data / "env.json").write_text(json.dumps(environment, indent=2))

    logging.getLogger("uvicorn.error").addFilter(_DroppedConnectionNoise())
    config = uvicorn.Config(
        create_app(sandbox),
        ssl_certfile=str(tls.server_cert),
        ssl_keyfile=str(tls.server_key),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            print(f"Graph sandbox on {origin} (data in {args.data}); client environment:")
            for name, value in environment.items():
                print(f"  export {name}={value}")
            print(f"Mailbox browser: {origin}/", flush=True)
            print("SANDBOX READY", flush=True)
        await task

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
