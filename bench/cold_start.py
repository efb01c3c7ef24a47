"""Cold start: a fresh interpreter importing `function_app` and indexing it (time, peak RSS), and the first
mail a cold worker sends (import, managed identity -> Key Vault -> Entra token, sendMail to the sandbox with
no added latency, status rows in Azurite). Baseline in the same run: a bare `import azure.functions`.

Floors in the same run: every library module (not the app's own) that the import + index, or the first mail,
leaves loaded, imported bare in a fresh interpreter in the order it was loaded. What the app costs above them
is its own code and its requests; the floor is what its libraries cost (pydantic for the routing file checked
at start-up; the Storage, identity, Key Vault and msgraph SDKs and their HTTP stacks for the first mail).

Targets (issue 19; 2-core machine, medians of 7 runs): import + index at most 2x the bare import, peak RSS
<= 90 MB; first mail <= 500 ms.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

from common import ROOT, bench_line, local_cloud, median

RUNS = 7

# what the interpreter itself loaded before the script's first line: not part of any floor
BEFORE = """
import sys
BEFORE = set(sys.modules)
"""

LIBRARIES_BARE = """
import importlib, json, sys, time
names = json.loads(sys.stdin.read())
started = time.perf_counter()
for name in names:
    try:
        importlib.import_module(name)
    except Exception:  # a module made at run time (a lazy alias, a plugin's namespace): its package loaded it
        pass
print(json.dumps({"ms": (time.perf_counter() - started) * 1000}))
"""

IMPORT_ONLY = """
import json, time
started = time.perf_counter()
import azure.functions
elapsed = time.perf_counter() - started
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"ms": elapsed * 1000, "rss_mb": rss / 1024}))
"""

IMPORT_AND_INDEX = """
import json, time
started = time.perf_counter()
import function_app
functions = function_app.app.get_functions()
elapsed = time.perf_counter() - started
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"ms": elapsed * 1000, "rss_mb": rss / 1024, "functions": len(functions)}))
app = ("shared", "function_app", "__main__")
print(json.dumps({"libraries": [n for n in sys.modules if n.partition(".")[0] not in app and n not in BEFORE]}))
"""

FIRST_MAIL = """
import time
started = time.perf_counter()
import asyncio, json, sys
from azure.functions.queue import QueueMessage
import function_app
from shared.functions import shutdown

async def main():
    mail = {"id": sys.argv[1], "to": ["alice@contoso.test"], "subject": "Cold start", "text": "first mail"}
    message = QueueMessage(id=sys.argv[1], body=json.dumps(mail).encode(), dequeue_count=1)
    await function_app.mail_outbox.build().get_user_function()(message)
    sent = time.perf_counter() - started
    loaded.extend(name for name in sys.modules if name.partition(".")[0] not in app and name not in BEFORE)
    from shared.config import settings
    from shared.store import store
    status = await store(settings().storage).statuses.get(sys.argv[1])
    await shutdown()
    return sent, status.status

app, loaded = ("shared", "function_app", "__main__"), []
sent, status = asyncio.run(main())
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"ms": sent * 1000, "status": status, "rss_mb": rss / 1024, "libraries": loaded}))
"""


def _child(script: str, env: dict[str, str], *args: str, stdin: str | None = None) -> dict[str, Any]:
    """A fresh interpreter running `script`; its JSON lines merged (the last one wins)."""
    done = subprocess.run(
        [sys.executable, "-c", BEFORE + script, *args],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = {}
    for line in done.stdout.strip().splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


def main() -> None:
    with local_cloud() as cloud:
        # bytecode cached, as a deployed app that has started once has it (a shell with PYTHONDONTWRITEBYTECODE
        # would have every run compile the app's own modules, about 50 ms on this machine)
        env = {name: value for name, value in cloud.env.items() if name != "PYTHONDONTWRITEBYTECODE"}
        # warm the OS file cache once, as a deployed app's would be; and learn which libraries each loads
        index_libraries = json.dumps(_child(IMPORT_AND_INDEX, env)["libraries"])
        mail_libraries = json.dumps(_child(FIRST_MAIL, env, f"warm-{uuid.uuid4().hex[:8]}")["libraries"])
        base, app, index_floor, mails, mail_floor = [], [], [], [], []
        for _ in range(RUNS):  # alternately, so a change in the machine's load meets all alike
            base.append(_child(IMPORT_ONLY, env))
            app.append(_child(IMPORT_AND_INDEX, env))
            index_floor.append(_child(LIBRARIES_BARE, env, stdin=index_libraries))
            mails.append(_child(FIRST_MAIL, env, f"cold-{uuid.uuid4().hex[:8]}"))
            mail_floor.append(_child(LIBRARIES_BARE, env, stdin=mail_libraries))
    assert all(m["status"] == "sent" for m in mails), mails
    print(f"import azure.functions: {[round(r['ms']) for r in base]} ms")
    print(f"import function_app + index ({int(app[0]['functions'])} functions): {[round(r['ms']) for r in app]} ms")
    print(f"  its {len(json.loads(index_libraries))} library modules, bare: {[round(r['ms']) for r in index_floor]} ms")
    print(f"peak RSS after import + index: {[round(r['rss_mb'], 1) for r in app]} MB")
    print(f"first mail by a cold worker: {[round(r['ms']) for r in mails]} ms")
    print(f"  its {len(json.loads(mail_libraries))} library modules, bare: {[round(r['ms']) for r in mail_floor]} ms")
    base_ms, base_mb = median([r["ms"] for r in base]), median([r["rss_mb"] for r in base])
    index_ms, index_mb = median([r["ms"] for r in app]), median([r["rss_mb"] for r in app])
    first_ms = median([r["ms"] for r in mails])
    index_floor_ms, mail_floor_ms = median([r["ms"] for r in index_floor]), median([r["ms"] for r in mail_floor])
    bench_line(
        "cold_import_index",
        index_ms,
        "ms",
        f"import azure.functions {base_ms:.0f} ms",
        ratio=index_ms / base_ms,
        target="<= 2x baseline",
        met=index_ms <= 2 * base_ms,
    )
    bench_line(
        "cold_peak_rss",
        index_mb,
        "MB",
        f"import azure.functions {base_mb:.1f} MB",
        ratio=index_mb / base_mb,
        target="<= 90 MB",
        met=index_mb <= 90,
    )
    bench_line(
        "cold_import_index_libraries",
        index_floor_ms,
        "ms",
        f"import azure.functions {base_ms:.0f} ms",
        ratio=index_floor_ms / base_ms,
        target="floor: the libraries import + index loads, bare",
    )
    bench_line(
        "cold_first_mail",
        first_ms,
        "ms",
        f"its libraries bare {mail_floor_ms:.0f} ms",
        ratio=first_ms / mail_floor_ms,
        target="<= 500 ms",
        met=first_ms <= 500,
    )
    bench_line(
        "cold_first_mail_libraries",
        mail_floor_ms,
        "ms",
        target="floor: the libraries a first mail loads, bare",
    )


if __name__ == "__main__":
    main()
