"""Entra ID (openid-configuration, client-credentials token endpoint) and the App Service managed identity."""

from __future__ import annotations

import hashlib
import hmac
from base64 import urlsafe_b64encode
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import entra_error
from .state import Sandbox, base_url, read_body
from .tokens import issue, resource_of

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _tenant(sandbox: Sandbox, request: Request) -> dict[str, str] | None:
    tenant = sandbox.store.tenant()
    asked = request.path_params["tenant"].lower()
    return tenant if asked in {tenant["id"].lower(), tenant["domain"].lower()} else None


async def openid_configuration(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    tenant = _tenant(sandbox, request)
    if tenant is None:
        return entra_error(400, "invalid_tenant", 90002, f"Tenant '{request.path_params['tenant']}' not found.")
    root = f"{base_url(request)}/{tenant['id']}"
    return JSONResponse(
        {
            "issuer": f"{root}/v2.0",
            "token_endpoint": f"{root}/oauth2/v2.0/token",
            "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
            "jwks_uri": f"{base_url(request)}/{tenant['id']}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "sandbox.test",
        }
    )


async def token(request: Request) -> Response:
    """`POST /{tenant}/oauth2/v2.0/token`: client credentials with a secret or a certificate assertion."""
    sandbox: Sandbox = request.app.state.sandbox
    tenant = _tenant(sandbox, request)
    if tenant is None:
        return entra_error(400, "invalid_request", 90002, f"Tenant '{request.path_params['tenant']}' not found.")
    form = dict(parse_qsl((await read_body(request, 64 * 1024)).decode("utf-8", "replace")))
    if form.get("grant_type") != "client_credentials":
        return entra_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
    client_id = form.get("client_id", "")
    if not client_id:
        return entra_error(400, "invalid_request", 900144, "The request body must contain the 'client_id' parameter.")
    resource = resource_of(form.get("scope", ""), base_url(request))
    if resource is None or not form.get("scope", "").strip().endswith("/.default"):
        return entra_error(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope "
            f"'{form.get('scope', '')}' is not valid. Client credential flows must have a scope "
            "value with /.default suffixed to the resource identifier.",
        )
    try:
        kind, app = sandbox.store.principal(client_id)
    except KeyError:
        kind, app = "", {}
    if kind != "app":
        return entra_error(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory '{tenant['domain']}'.",
        )
    if "client_secret" in form:
        if not any(hmac.compare_digest(form["client_secret"].encode(), s.encode()) for s in app["secrets"]):
            return entra_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret "
                f"being sent in the request is the client secret value, not the client secret ID, "
                f"for a secret added to app '{client_id}'.",
            )
    elif "client_assertion" in form:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return entra_error(400, "invalid_request", 900023, "Specified client_assertion_type is not supported.")
        endpoint = f"{base_url(request)}/{request.path_params['tenant']}/oauth2/v2.0/token"
        problem = _assertion_problem(form["client_assertion"], client_id, app["certificates"], endpoint)
        if problem:
            return entra_error(401, "invalid_client", problem[0], problem[1])
    else:
        return entra_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
    lifetime = sandbox.store.token_lifetime()
    access_token, _ = issue(
        sandbox.signing_key,
        tenant_id=tenant["id"],
        client_id=client_id,
        resource=resource,
        roles=list(app["roles"]),
        lifetime=lifetime,
        issuer=f"https://sts.windows.net/{tenant['id']}/",
    )
    return JSONResponse(
        {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": access_token}
    )


def _b64url(digest: bytes) -> str:
    return urlsafe_b64encode(digest).decode().rstrip("=")


def _thumbprints(pem: str) -> dict[str, Any]:
    certificate = x509.load_pem_x509_certificate(pem.encode())
    der = certificate.public_bytes(Encoding.DER)
    return {
        "x5t": _b64url(hashlib.sha1(der).digest()),  # noqa: S324 - the x5t header is SHA-1 by definition
        "x5t#S256": _b64url(hashlib.sha256(der).digest()),
        "key": certificate.public_key(),
    }


def _assertion_problem(
    assertion: str, client_id: str, certificates: list[str], endpoint: str
) -> tuple[int, str] | None:
    """Why a certificate client assertion is refused (AADSTS code, text), or None when it is good."""
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError:
        return 50027, "JWT token is invalid or malformed."
    known = [_thumbprints(pem) for pem in certificates]
    sha256 = str(header.get("x5t#S256", "")).rstrip("=")  # MSAL pads these; Entra accepts either
    sha1 = str(header.get("x5t", "")).rstrip("=")
    match = next((c for c in known if sha256 == c["x5t#S256"] or sha1 == c["x5t"]), None)
    if match is None:
        return 700027, "Client assertion contains an invalid signature: the key was not found."
    try:
        claims = jwt.decode(
            assertion,
            match["key"],
            algorithms=["RS256", "PS256"],
            audience=endpoint,
            options={"require": ["exp", "aud", "iss", "sub"]},
            leeway=300,
        )
    except jwt.ExpiredSignatureError:
        return 700024, "Client assertion is not within its valid time range."
    except jwt.InvalidAudienceError:
        return 700021, "Client assertion audience claim does not match the token endpoint."
    except jwt.InvalidTokenError:
        return 700027, "Client assertion failed signature validation."
    if claims["iss"] != client_id or claims["sub"] != client_id:
        return 700023, "Client assertion issuer and subject must be the client id."
    return None


async def msi_token(request: Request) -> Response:
    """App Service managed identity endpoint (`IDENTITY_ENDPOINT`, api-version 2019-08-01)."""
    sandbox: Sandbox = request.app.state.sandbox
    header = request.headers.get("x-identity-header", "")
    if not hmac.compare_digest(header.encode(), sandbox.store.identity_header().encode()):
        return JSONResponse({"statusCode": 401, "message": "The X-IDENTITY-HEADER is missing or wrong."}, 401)
    if request.query_params.get("api-version") != "2019-08-01":
        return JSONResponse({"statusCode": 400, "message": "api-version must be 2019-08-01."}, 400)
    resource = resource_of(request.query_params.get("resource", ""), base_url(request))
    if resource is None:
        return JSONResponse({"statusCode": 400, "message": "The resource is not supported by the sandbox."}, 400)
    client_id = request.query_params.get("client_id") or ""
    try:
        client_id = client_id or sandbox.store.first_identity()  # no client_id: the system-assigned identity
        kind, identity = sandbox.store.principal(client_id)
    except KeyError:
        kind, identity = "", {}
    if kind != "identity":
        return JSONResponse(
            {"statusCode": 400, "message": "No managed identity with that client_id is assigned to this app."}, 400
        )
    tenant = sandbox.store.tenant()
    lifetime = sandbox.store.token_lifetime()
    access_token, expires = issue(
        sandbox.signing_key,
        tenant_id=tenant["id"],
        client_id=client_id,
        resource=resource,
        roles=list(identity.get("roles") or []),
        lifetime=lifetime,
        issuer=f"https://sts.windows.net/{tenant['id']}/",
    )
    return JSONResponse(
        {
            "access_token": access_token,
            "expires_on": str(expires),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id,
        }
    )
