"""Error answers in the shapes the real services use."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse


class GraphError(Exception):
    """A Graph error: status, Graph's code and message, optional headers (Retry-After)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def graph_error_body(code: str, message: str, request_id: str, client_request_id: str) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    }


def new_request_id() -> str:
    return str(uuid.uuid4())


def entra_error(status: int, error: str, code: int, description: str) -> JSONResponse:
    """An Entra ID token endpoint error (OAuth2 shape with AADSTS codes)."""
    trace = new_request_id()
    return JSONResponse(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace}",
            "error_codes": [code],
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            "trace_id": trace,
            "correlation_id": new_request_id(),
        },
        status_code=status,
    )


def vault_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, inner: str | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if inner:
        body["error"]["innererror"] = {"code": inner}
    return JSONResponse(body, status_code=status, headers=headers)
