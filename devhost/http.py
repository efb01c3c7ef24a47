"""HTTP triggers: route templates (parameters, constraints, optional and catch-all), methods, route prefix."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .host import HostedFunction, Invoker

log = logging.getLogger("devhost.http")
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "double": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
    "bool": r"(?i:true|false)",
    "alpha": r"[A-Za-z]+",
    "guid": r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}",
}
_PARAMETER = re.compile(r"^\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+))?(\?)?\}$")
# The Functions host takes HTTP requests of at most 100 MB (104,857,600 bytes; Microsoft's HTTP trigger limits)
MAX_BODY_BYTES = 104_857_600


@dataclass
class HttpRoute:
    function: HostedFunction
    template: str
    pattern: re.Pattern[str]
    methods: set[str]
    literals: int  # literal segments: more literal routes win, as in ASP.NET routing


def compile_route(function: HostedFunction, prefix: str) -> HttpRoute:
    template = str(function.trigger.get("route") or function.name).strip("/")
    parts = []
    literals = 0
    for segment in template.split("/"):
        match = _PARAMETER.match(segment)
        if not match:
            parts.append("/" + re.escape(segment))
            literals += 1
            continue
        catch_all, name, constraint, optional = match.groups()
        if constraint and constraint.lower() not in _CONSTRAINTS:
            raise ValueError(f"route {template!r}: unsupported constraint {constraint!r}")
        body = ".*" if catch_all else _CONSTRAINTS[constraint.lower()] if constraint else "[^/]+"
        parts.append(f"(?:/(?P<{name}>{body}))?" if optional or catch_all else f"/(?P<{name}>{body})")
    root = "/" + prefix.strip("/") if prefix.strip("/") else ""
    methods = {str(getattr(m, "value", m)).upper() for m in function.trigger.get("methods") or []}
    return HttpRoute(
        function,
        f"{root}/{template}",
        re.compile("^" + re.escape(root) + "".join(parts) + "/?$", re.IGNORECASE),
        methods,
        literals,
    )


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _query(request: Request) -> dict[str, str]:
    """Query parameters as the host passes them: repeated ones joined with `,`, empty values dropped."""
    joined: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        if value:
            joined.setdefault(name, []).append(value)
    return {name: ",".join(values) for name, values in joined.items()}


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def http_app(functions: list[HostedFunction], prefix: str, invoker: Invoker) -> tuple[Starlette, list[HttpRoute]]:
    routes = sorted(
        (compile_route(f, prefix) for f in functions if f.trigger_type == "httpTrigger"), key=lambda r: -r.literals
    )

    async def dispatch(request: Request) -> Response:
        path = request.url.path
        matched = [(route, m) for route in routes if (m := route.pattern.match(path))]
        if not matched:
            return Response(status_code=404)
        chosen = next(((r, m) for r, m in matched if not r.methods or request.method in r.methods), None)
        if chosen is None:
            allowed = sorted({method for r, _ in matched for method in r.methods})
            return Response(status_code=405, headers={"Allow": ", ".join(allowed)})
        route, match = chosen
        length = _content_length(request)
        if length is None and "chunked" in request.headers.get("transfer-encoding", "").lower():
            return _error(
                411,
                "length_required",
                "send the request body with a Content-Length header: the Functions host passes a body to the "
                "function only when Content-Length is above 0, so a chunked body would arrive empty",
            )
        if length is not None and length > MAX_BODY_BYTES:
            return _error(
                413,
                "payload_too_large",
                f"the Functions host takes request bodies of at most {MAX_BODY_BYTES} bytes (100 MB), not {length}",
            )
        http_request = func.HttpRequest(
            method=request.method,
            url=str(request.url),
            headers=dict(request.headers),
            params=_query(request),
            route_params={k: v for k, v in match.groupdict().items() if v},
            body=await request.body() if length else b"",
        )
        try:
            result: Any = await invoker.invoke(route.function, http_request)
        except Exception:
            return Response(status_code=500)
        if result is None:
            return Response(status_code=204)
        if isinstance(result, func.HttpResponse):
            headers = dict(result.headers)
            if result.mimetype and "content-type" not in {k.lower() for k in headers}:
                headers["Content-Type"] = f"{result.mimetype}; charset={result.charset or 'utf-8'}"
            return Response(result.get_body(), status_code=result.status_code, headers=headers)
        if isinstance(result, (dict, list)):
            return JSONResponse(result)
        return Response(str(result))

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", dispatch, methods=methods)]), routes
