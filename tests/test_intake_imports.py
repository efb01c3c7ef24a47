"""The HTTP intake paths (POST /api/mail up to the enqueue, POST /api/alerts up to the group rows) never import
msgraph: proved in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def test_posting_a_mail_or_an_alert_imports_no_msgraph_kiota_or_identity(app_env: dict[str, str]) -> None:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == [202, 202]
    assert outcome["heavy"] == []


INDEX = """
import json, sys
import function_app
function_app.app.get_functions()
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules if m.startswith(("jinja2", "msgraph", "kiota"))})))
"""


def test_importing_and_indexing_the_app_loads_no_jinja2_or_msgraph(app_env: dict[str, str]) -> None:
    """What every cold start pays: Jinja2 waits for the first mail rendered, msgraph for the first Graph call."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", INDEX],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
