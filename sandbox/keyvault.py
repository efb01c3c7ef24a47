"""Key Vault secrets: `GET /secrets/{name}[/{version}]` behind the bearer challenge."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import vault_error
from .state import Sandbox, base_url
from .tokens import VAULT, TokenRejected, verify


def _challenge(request: Request, sandbox: Sandbox) -> dict[str, str]:
    authority = f"{base_url(request)}/{sandbox.store.tenant()['id']}"
    return {"WWW-Authenticate": f'Bearer authorization="{authority}", resource="{VAULT}"'}


async def get_secret(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    if not request.query_params.get("api-version"):
        return vault_error(400, "BadParameter", "The 'api-version' query parameter is required.")
    authorization = request.headers.get("authorization")
    if not authorization:
        return vault_error(
            401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", _challenge(request, sandbox)
        )
    try:
        caller = verify(sandbox.signing_key, authorization, VAULT)
    except TokenRejected as rejected:
        return vault_error(401, "Unauthorized", f"AKV10022: {rejected}", _challenge(request, sandbox))
    name = request.path_params["name"]
    if caller.client_id not in sandbox.store.vault_readers():
        return vault_error(
            403,
            "Forbidden",
            f"The user, group or application 'appid={caller.client_id}' does not "
            "have secrets get permission on key vault 'sandbox'.",
            inner="ForbiddenByPolicy",
        )
    try:
        row = sandbox.store.secret(name, request.path_params.get("version"))
    except KeyError:
        return vault_error(404, "SecretNotFound", f"A secret with (name/id) {name} was not found in this key vault.")
    return JSONResponse(
        {
            "value": row["value"],
            "id": f"{base_url(request)}/secrets/{row['name']}/{row['version']}",
            "attributes": {
                "enabled": True,
                "created": row["created"],
                "updated": row["created"],
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": {},
        }
    )
