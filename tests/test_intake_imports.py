"""What each cold path imports, proved in a fresh interpreter: the HTTP intake paths (POST /api/mail up to the
enqueue, POST /api/alerts up to the group rows) never import msgraph; indexing the app imports only what its
start-up checks need; a first mail imports the sender's code and nothing of the API, alerts or digests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

PROBE = """
import asyncio, json, sys
import azure.functions as func
import function_app
from shared.functions import shutdown

async def main():
    request = func.HttpRequest("POST", "/api/mail", headers={"Content-Type": "application/json"},
                               body=json.dumps({"to": ["alice@contoso.test"], "subject": "s", "text": "t"}).encode())
    response = await function_app.post_mail.build().get_user_function()(request)
    alert = func.HttpRequest("POST", "/api/alerts", headers={"Content-Type": "application/json"},
                             body=json.dumps({"name": "DiskFilling", "severity": "critical"}).encode())
    alerted = await function_app.post_alerts.build().get_user_function()(alert)
    await shutdown()
    return [response.status_code, alerted.status_code]

status = asyncio.run(main())
heavy = sorted({m.split(".")[0] for m in sys.modules if m.startswith(("msgraph", "kiota", "azure.identity", "msal"))})
print(json.dumps({"status": status, "heavy": heavy}))
"""


def _probe(script: str, *args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_posting_a_mail_or_an_alert_imports_no_msgraph_kiota_or_identity(app_env: dict[str, str]) -> None:
    outcome = json.loads(_probe(PROBE))
    assert outcome["status"] == [202, 202]
    assert outcome["heavy"] == []


INDEX = """
import json, sys
import function_app
function_app.app.get_functions()
print(json.dumps(sorted({m for m in sys.modules if m.startswith(LOADED_ON_FIRST_USE)})))
"""

# indexing needs none of these: the triggers' own code, the Storage SDKs (azure-core and aiohttp with them),
# Jinja2 (the first mail rendered) and msgraph (the first Graph call)
LOADED_ON_FIRST_USE = (
    "shared.api",
    "shared.endpoints",
    "shared.alerts",
    "shared.outbox",
    "shared.digests",
    "shared.store",
    "shared.mail",
    "azure.core",
    "azure.data",
    "azure.storage",
    "aiohttp",
    "jinja2",
    "msgraph",
    "kiota",
)


def test_importing_and_indexing_the_app_loads_only_what_its_start_up_checks_need(app_env: dict[str, str]) -> None:
    """What every cold start pays: the settings and the routing file are checked; each trigger's code, the
    Storage SDKs, Jinja2 and msgraph wait for the invocation that needs them."""
    code = INDEX.replace("LOADED_ON_FIRST_USE", repr(LOADED_ON_FIRST_USE))
    assert json.loads(_probe(code)) == []


FIRST_MAIL = """
import asyncio, json, sys
from azure.functions.queue import QueueMessage
import function_app
from shared.functions import shutdown

async def main():
    mail = {"id": sys.argv[1], "to": ["alice@contoso.test"], "subject": "Cold start", "text": "first mail"}
    message = QueueMessage(id=sys.argv[1], body=json.dumps(mail).encode(), dequeue_count=1)
    await function_app.mail_outbox.build().get_user_function()(message)
    loaded = {".".join(m.split(".")[:2]) for m in sys.modules if m.startswith(("shared.", "azure."))}
    from shared.config import settings
    from shared.store import store
    status = await store(settings().storage).statuses.get(sys.argv[1])
    await shutdown()
    return {"status": status.status, "loaded": sorted(loaded)}

print(json.dumps(asyncio.run(main())))
"""


def test_a_cold_workers_first_mail_loads_the_sender_and_not_the_api_alerts_digests_or_queue_sdk(
    app_env: dict[str, str],
) -> None:
    outcome = json.loads(_probe(FIRST_MAIL, f"cold-imports-{uuid.uuid4().hex[:8]}"))

    assert outcome["status"] == "sent"
    loaded = set(outcome["loaded"])
    assert {"shared.outbox", "shared.delivery", "shared.graph", "azure.data", "azure.identity"} <= loaded
    assert loaded.isdisjoint({"shared.api", "shared.endpoints", "shared.alerts", "shared.digests", "azure.storage"})


def test_every_http_function_names_an_endpoint_that_exists(app_env: dict[str, str]) -> None:
    """The adapters find their endpoint by name on the first request: a name without an endpoint would only
    show then, as the host's 500."""
    import inspect

    import function_app
    from shared import endpoints, functions
    from shared.routes import ROUTES

    adapter_code = functions.http_endpoint("any").__code__  # every HTTP adapter runs this code
    adapters = [value for value in vars(functions).values() if getattr(value, "__code__", None) is adapter_code]
    bound = {
        f.get_user_function().__name__ for f in (b.build() for b in vars(function_app).values() if hasattr(b, "build"))
    }

    assert len(adapters) == len(ROUTES) + 1 and {a.__name__ for a in adapters} <= bound
    for adapter in adapters:
        endpoint = getattr(endpoints, adapter.__name__)
        assert list(inspect.signature(endpoint).parameters) == ["request", "app"]
