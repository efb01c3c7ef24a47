"""The sandbox's ASGI app: one HTTPS origin for Entra ID, managed identity, Key Vault, Graph and control."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import uploads, web
from .clock import CLOCK
from .errors import GraphError, graph_error_body, new_request_id
from .faults import Faults
from .graph import GraphCall, GraphResult
from .identity import msi_token, openid_configuration, token
from .keyvault import get_secret
from .seed import SeedError, parse_seed
from .state import BodyTooLarge, Sandbox, base_url, read_body
from .tokens import GRAPH, TokenRejected, verify

GRAPH_BODY_LIMIT = 4 * 1024 * 1024  # Graph refuses request bodies over 4 MB
CONTROL_BODY_LIMIT = 256 * 1024 * 1024


class DroppedConnection(Response):
    """Starts an answer and abandons it: the server closes the connection mid-response."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
            }
        )


async def graph_endpoint(request: Request) -> Response:
    """Every `/v1.0/...` request: token, then one call or a `$batch`, logged."""
    sandbox: Sandbox = request.app.state.sandbox
    started = time.perf_counter()
    request_id = new_request_id()
    client_request_id = request.headers.get("client-request-id") or request_id
    path = "/" + request.path_params["path"]
    entry: dict[str, Any] = {"method": request.method, "path": path, "query": request.url.query, "mailbox": None}
    if sandbox.faults.should_drop():
        sandbox.log.add({**entry, "status": 0, "ms": 0.0, "dropped": True})
        return DroppedConnection()
    try:
        body = await read_body(request, GRAPH_BODY_LIMIT)
        caller = verify(sandbox.signing_key, request.headers.get("authorization"), GRAPH)
        entry["app"] = caller.client_id
        root = base_url(request) + "/v1.0"
        if path.lower() == "/$batch":
            if request.method != "POST":
                raise GraphError(405, "Request_BadRequest", "$batch accepts POST only.")
            answer, entry["requests"], dropped = await sandbox.graph.batch(body, caller, root)
            result = GraphResult(
                200, answer, {"Content-Type": "application/json"}, ambiguous="drop" if dropped else None
            )
        else:
            headers = {name.lower(): value for name, value in request.headers.items()}
            query = list(request.query_params.multi_items())
            call = GraphCall(request.method, path, query, body, caller, root, headers)
            result = await sandbox.graph.call(call)
    except BodyTooLarge:
        result = _graph_error(GraphError(413, "RequestEntityTooLarge", "The request body is larger than 4 MB."))
    except TokenRejected as rejected:
        result = _graph_error(
            GraphError(
                401,
                "InvalidAuthenticationToken",
                str(rejected),
                {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'},
            )
        )
    except GraphError as error:
        result = _graph_error(error)
    if result.body is not None and "error" in result.body:
        result.body["error"]["innerError"].update({"request-id": request_id, "client-request-id": client_request_id})
    entry.update(
        status=result.status,
        mailbox=result.mailbox or entry["mailbox"],
        ms=round((time.perf_counter() - started) * 1000, 2),
    )
    if result.ambiguous:
        entry["ambiguous"] = True
    if result.ambiguous == "drop":
        sandbox.log.add({**entry, "status": 0, "dropped": True})
        return DroppedConnection()
    sandbox.log.add(entry)
    headers = {**result.headers, "request-id": request_id, "client-request-id": client_request_id}
    if result.body is None:
        headers.pop("Content-Type", None)
        return Response(status_code=result.status, headers=headers)
    return JSONResponse(result.body, status_code=result.status, headers=headers)


def _graph_error(error: GraphError) -> GraphResult:
    body = graph_error_body(error.code, error.message, "", "")
    return GraphResult(error.status, body, {"Content-Type": "application/json", **error.headers})


# -- control API ------------------------------------------------------------------------------------------
def _loopback_only(request: Request) -> None:
    host = request.client.host if request.client else ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise HTTPException(403, "The control API answers loopback clients only.")


async def _control_json(request: Request) -> Any:
    _loopback_only(request)
    try:
        body = await read_body(request, CONTROL_BODY_LIMIT)
    except BodyTooLarge:
        raise HTTPException(413, "Control request body too large.") from None
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise HTTPException(400, "The body is not valid JSON.") from None


async def control_health(request: Request) -> Response:
    _loopback_only(request)
    sandbox: Sandbox = request.app.state.sandbox
    count = sandbox.store.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    return JSONResponse(
        {"status": "ok", "users": len(sandbox.store.users()), "messages": count, "lastRequestSeq": sandbox.log.last_seq}
    )


async def control_reset(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    raw = await _control_json(request)
    raw = raw if raw is not None else sandbox.seed
    try:
        seed = parse_seed(raw)
    except SeedError as error:
        raise HTTPException(400, str(error)) from None
    sandbox.store.reset(seed, raw)
    sandbox.transport.forget()
    sandbox.faults.configure(Faults())
    return JSONResponse({"status": "reset", "users": [u.upn for u in sandbox.store.users()]})


async def control_faults(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    if request.method == "PUT":
        raw = await _control_json(request)
        try:
            sandbox.faults.configure(Faults.model_validate(raw or {}))
        except ValidationError as error:
            first = error.errors()[0]
            raise HTTPException(400, f"faults.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    else:
        _loopback_only(request)
    return JSONResponse(sandbox.faults.faults.model_dump(by_alias=True))


async def control_clock(request: Request) -> Response:
    """`GET` the sandbox's time; `PUT {"advanceSeconds": N}` moves it forward."""
    sandbox: Sandbox = request.app.state.sandbox
    if request.method == "PUT":
        raw = await _control_json(request)
        seconds = raw.get("advanceSeconds") if isinstance(raw, dict) else None
        if (
            not isinstance(raw, dict)
            or set(raw) != {"advanceSeconds"}
            or not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not 0 <= seconds <= 10 * 365 * 86400
        ):
            raise HTTPException(400, 'The body must be {"advanceSeconds": N} with N from 0 to ten years.')
        sandbox.store.advance_clock(float(seconds))
    else:
        _loopback_only(request)
    return JSONResponse({"now": CLOCK.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")})


async def upload_endpoint(request: Request) -> Response:
    """An attachment upload URL (Outlook's `AttachmentSessions`), outside Graph's token checks and faults."""
    sandbox: Sandbox = request.app.state.sandbox
    headers = {name.lower(): value for name, value in request.headers.items()}
    latency = sandbox.faults.faults.upload_latency_ms
    if latency and request.method == "PUT":
        await asyncio.sleep(latency / 1000)
    try:
        body = await read_body(request, uploads.CHUNK_LIMIT)
        answer = uploads.handle(
            sandbox.store,
            base_url(request),
            request.method,
            request.path_params["path"],
            request.query_params.get("authtoken", ""),
            headers,
            body,
        )
    except BodyTooLarge:
        error = GraphError(413, "RequestEntityTooLarge", "A chunk may carry at most 4 MB.")
        return JSONResponse(graph_error_body(error.code, error.message, new_request_id(), ""), 413)
    except GraphError as error:
        body_json = graph_error_body(error.code, error.message, new_request_id(), "")
        return JSONResponse(body_json, error.status, headers=error.headers)
    if answer.body is None:
        return Response(status_code=answer.status, headers=answer.headers)
    return JSONResponse(answer.body, answer.status, headers=answer.headers)


def _since(request: Request) -> int:
    text = request.query_params.get("since", "0")
    if not text.isdigit():
        raise HTTPException(400, "since must be a whole number.")
    return int(text)


async def control_requests(request: Request) -> Response:
    _loopback_only(request)
    sandbox: Sandbox = request.app.state.sandbox
    return JSONResponse({"value": sandbox.log.since(_since(request)), "lastSeq": sandbox.log.last_seq})


async def control_sent(request: Request) -> Response:
    """Every mail sent through sendMail, with its recipients outside the sandbox."""
    _loopback_only(request)
    sandbox: Sandbox = request.app.state.sandbox
    return JSONResponse({"value": sandbox.store.outbound(_since(request))})


def _control_user(sandbox: Sandbox, upn: str) -> Any:
    try:
        return sandbox.store.user(upn)
    except KeyError:
        raise HTTPException(404, f"No sandbox user '{upn}'.") from None


async def control_messages(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    if request.method == "POST":
        raw = await _control_json(request)
        user = _control_user(sandbox, request.path_params["upn"])
        if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
            raise HTTPException(400, "The body must be a JSON list of Graph message objects.")
        try:
            delivered = sandbox.store.deliver_seeded(user, raw)
        except (ValueError, TypeError, KeyError) as error:
            raise HTTPException(400, f"A message could not be delivered: {error}") from None
        return JSONResponse(
            {"value": [{"id": d["id"], "parentFolderId": d["parentFolderId"]} for d in delivered]}, status_code=201
        )
    _loopback_only(request)
    user = _control_user(sandbox, request.path_params["upn"])
    folder_id = None
    if "folder" in request.query_params:
        try:
            folder_id = sandbox.store.folder_by_path(user, request.query_params["folder"]).id
        except KeyError:
            raise HTTPException(404, "No such folder.") from None
    return JSONResponse(
        {
            "value": [
                {k: v for k, v in d.items() if k != "attachments"}
                | {
                    "attachments": [
                        {k: v for k, v in a.items() if k != "contentBytes"} for a in d.get("attachments", [])
                    ]
                }
                for d in sandbox.store.mailbox_messages(user, folder_id)
            ]
        }
    )


async def control_vault_secret(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    raw = await _control_json(request)
    if not isinstance(raw, dict) or not isinstance(raw.get("value"), str):
        raise HTTPException(400, 'The body must be {"value": "..."}.')
    version = sandbox.store.set_secret(request.path_params["name"], raw["value"])
    return JSONResponse({"name": request.path_params["name"], "version": version}, status_code=201)


async def control_app_secret(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    raw = await _control_json(request)
    if not isinstance(raw, dict) or not isinstance(raw.get("secret"), str) or not raw["secret"]:
        raise HTTPException(400, 'The body must be {"secret": "...", "keepExisting": false}.')
    try:
        sandbox.store.rotate_app_secret(
            request.path_params["client_id"], raw["secret"], bool(raw.get("keepExisting", False))
        )
    except KeyError:
        raise HTTPException(404, "No app registration with that client id.") from None
    return JSONResponse({"clientId": request.path_params["client_id"], "status": "rotated"}, status_code=201)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": {"code": f"Http{exc.status_code}", "message": exc.detail}}, exc.status_code)


async def _server_error(request: Request, exc: Exception) -> Response:
    body = graph_error_body("InternalServerError", "The sandbox failed to handle the request.", new_request_id(), "")
    return JSONResponse(body, status_code=500)


def create_app(sandbox: Sandbox) -> Starlette:
    graph_methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    routes = [
        Route("/_sandbox/health", control_health),
        Route("/_sandbox/reset", control_reset, methods=["POST"]),
        Route("/_sandbox/faults", control_faults, methods=["GET", "PUT"]),
        Route("/_sandbox/requests", control_requests),
        Route("/_sandbox/sent", control_sent),
        Route("/_sandbox/clock", control_clock, methods=["GET", "PUT"]),
        Route("/api/v2.0/{path:path}", upload_endpoint, methods=["GET", "PUT", "DELETE"]),
        Route("/_sandbox/users/{upn}/messages", control_messages, methods=["GET", "POST"]),
        Route("/_sandbox/keyvault/secrets/{name}", control_vault_secret, methods=["POST"]),
        Route("/_sandbox/apps/{client_id}/secrets", control_app_secret, methods=["POST"]),
        Route("/v1.0/{path:path}", graph_endpoint, methods=graph_methods),
        Route("/msi/token", msi_token),
        Route("/secrets/{name}", get_secret),
        Route("/secrets/{name}/{version}", get_secret),
        Route("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration),
        Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
        *web.routes(),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.state.sandbox = sandbox
    return app
