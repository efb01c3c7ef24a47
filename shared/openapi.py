"""The OpenAPI 3.1 description of the HTTP API (`GET /api/openapi.json`) and the published mail schema.

Both are generated: paths from the route table (`shared.routes`), one operation per route below, and every
body and answer from its pydantic model (`shared.mail.MailRequest`, which the API validates mail with, and
`shared.api_models`). OpenAPI 3.1 schemas are JSON Schema 2020-12, which is what pydantic writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

from . import api_models as m
from . import routes
from .alerts.intake import SOURCES
from .attachments import FILE_PART, MAIL_PART
from .mail import ID_PATTERN, MAX_ATTACHMENTS

SCHEMA_ID = "https://schemas.notifier.invalid/mail.schema.json"
OPENAPI_VERSION = "3.1.0"


class _Generator(GenerateJsonSchema):
    """pydantic's JSON Schema without a title on every property (`"title": "Contentbase64"` helps no one)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


@dataclass(frozen=True)
class Param:
    name: str
    location: Literal["path", "query", "header"]
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Answer:
    description: str
    model: type[BaseModel] | None = None
    headers: dict[str, str] = field(default_factory=dict)  # name -> description


@dataclass(frozen=True)
class Form:
    """A `multipart/form-data` body besides the JSON one: the JSON body as the part `json_part`, then file parts
    named `file_part`."""

    json_part: str
    file_part: str
    description: str


@dataclass(frozen=True)
class Operation:
    summary: str
    answers: dict[int, Answer]
    body: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    form: Form | None = None


_MAIL_ID = {"type": "string", "pattern": ID_PATTERN.pattern}
_DRY_RUN = Param("dryRun", "query", {"type": "boolean"}, "answer what would be done; nothing is stored or sent")
_FAILED = Answer("An unexpected failure (the answer names an incident id, no internals)", m.Error)


def _error(description: str) -> Answer:
    return Answer(description, m.Error)


OPERATIONS: dict[routes.Route, Operation] = {
    routes.POST_MAIL: Operation(
        "Queue a mail",
        {
            202: Answer(
                "Queued",
                m.Queued,
                {"Location": "/api/mail/{id}", "Idempotent-Replay": "`true` when the id was seen before"},
            ),
            400: _error("Not a valid mail or form (details name each field or part)"),
            409: _error("The id is taken by another mail"),
            413: _error(
                "The mail, encoded as Exchange measures it, is larger than MAIL_MAX_MESSAGE_BYTES (the message names "
                "both sizes and the limit), or the JSON body or mail part over 5 MiB"
            ),
            415: _error("Neither JSON nor multipart/form-data, or a mail part that is not JSON"),
            500: _FAILED,
            503: _error("Storage unavailable"),
        },
        body=m.MailSubmission,
        params=(Param("Idempotency-Key", "header", _MAIL_ID, "makes the request idempotent, like the body's id"),),
        form=Form(
            MAIL_PART,
            FILE_PART,
            f"The mail as the first part, `{MAIL_PART}` (JSON, the same schema), then each file as a part named "
            f"`{FILE_PART}`: its filename is the attachment's name, its Content-Type the attachment's. At most "
            f"{MAX_ATTACHMENTS} attachments in all; the files are stored in the app's Storage until the mail is sent.",
        ),
    ),
    routes.GET_MAIL: Operation(
        "A mail's status",
        {
            200: Answer("The status", m.MailStatus),
            400: _error("Not a valid mail id"),
            404: _error("No mail with that id"),
            500: _FAILED,
        },
        params=(Param("id", "path", _MAIL_ID),),
    ),
    routes.POST_ALERTS: Operation(
        "Alerts from a monitoring source, named or detected from the payload",
        {
            202: Answer("Recorded in their groups", m.AlertsAccepted),
            200: Answer("Dry run: the groups and the mails they would get now", m.AlertsDryRun),
            400: _error("Not an alert payload of the source"),
            401: _error("The source's bearer token or signature is missing or wrong"),
            403: _error("The routing file requires authentication for every source, and this one has none"),
            404: _error("Unknown source"),
            413: _error("Body too large"),
            415: _error("Not JSON"),
            500: _FAILED,
            503: _error("Storage or Key Vault unavailable"),
        },
        body=m.AlertPayload,
        params=(Param("source", "path", {"type": "string", "enum": list(SOURCES)}), _DRY_RUN),
    ),
    routes.RUN_DIGEST: Operation(
        "Run a configured mailbox digest now",
        {
            200: Answer("What the run did (a dry run: the mail it would send)", m.DigestRun),
            400: _error("An unknown query parameter, or dryRun not true or false"),
            404: _error("No digest of that name"),
            409: _error("Another run of the digest holds it now (digest_running)"),
            500: _FAILED,
            502: _error("Graph refused the digest's mailbox (Graph's code)"),
            503: _error("Storage unavailable"),
        },
        params=(Param("name", "path", {"type": "string"}), _DRY_RUN),
    ),
    routes.RUN_ALERT_DIGEST: Operation(
        "Send (or preview) a mode: digest receiver's alert digest now",
        {
            200: Answer("What the run did (a dry run: the mail it would send)", m.AlertDigestRun),
            400: _error("An unknown query parameter, or dryRun not true or false"),
            404: _error("No receiver of that name"),
            409: _error(
                "The receiver is not mode: digest (not_a_digest_receiver), or another run holds its digest now "
                "(digest_running)"
            ),
            500: _FAILED,
            503: _error("Storage unavailable"),
        },
        params=(Param("receiver", "path", {"type": "string"}), _DRY_RUN),
    ),
    routes.HEALTH: Operation(
        "Configuration, storage, Key Vault, Graph token and digest checks, ok or not per kind; names nothing",
        {
            200: Answer("Every check passed", m.Health),
            400: _error("An unknown query parameter"),
            503: Answer("A check failed", m.Health),
        },
    ),
    routes.HEALTH_DETAILS: Operation(
        "The same checks with their names, times and short reasons; never a secret",
        {
            200: Answer("Every check passed", m.HealthDetails),
            400: _error("An unknown query parameter"),
            503: Answer("A check failed", m.HealthDetails),
        },
    ),
    routes.OPENAPI: Operation("This document", {200: Answer("OpenAPI 3.1"), 400: _error("An unknown query parameter")}),
}

_SECURITY_SCHEMES = {  # the Functions host takes a function key in either place
    "functionKeyHeader": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
    "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"},
}


def mail_schema() -> dict[str, Any]:
    """JSON Schema of a mail as `POST /api/mail` and `mail-outbox` take it (published as
    `schemas/mail.schema.json`)."""
    schema = m.MailSubmission.model_json_schema(
        by_alias=True, ref_template="#/$defs/{model}", schema_generator=_Generator
    )
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in `shared.routes.ROUTES`."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for operation in OPERATIONS.values():
        if operation.body is not None:
            models.append((operation.body, "validation"))
        models += [(a.model, "serialization") for a in operation.answers.values() if a.model is not None]
    refs, definitions = models_json_schema(
        list(dict.fromkeys(models)),
        by_alias=True,
        ref_template="#/components/schemas/{model}",
        schema_generator=_Generator,
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes.ROUTES:
        for path in route.openapi_paths():
            for method in route.methods:
                paths.setdefault(path, {})[method.lower()] = _operation(route, path, refs)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Graph mail notifier",
            "version": "1.0.0",
            "description": "Mail, alerts and digests through Microsoft Graph.",
        },
        "servers": [{"url": "/" + routes.ROUTE_PREFIX}],
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {}), "securitySchemes": _SECURITY_SCHEMES},
    }


def _operation(route: routes.Route, path: str, refs: dict[Any, Any]) -> dict[str, Any]:
    operation = OPERATIONS[route]
    in_path = set(re.findall(r"\{(\w+)\}", path))
    extra = sorted(in_path - set(re.findall(r"\{(\w+)\}", route.openapi_paths()[0])))
    result: dict[str, Any] = {
        "operationId": "_".join([route.function, *(f"by_{name}" for name in extra)]),
        "summary": operation.summary,
        "security": [] if route.auth_level == "anonymous" else [{name: []} for name in _SECURITY_SCHEMES],
        "responses": {str(status): _answer(answer, refs) for status, answer in sorted(operation.answers.items())},
    }
    parameters = [
        {
            "name": p.name,
            "in": p.location,
            **({"required": True} if p.location == "path" else {}),
            "schema": p.schema,
            **({"description": p.description} if p.description else {}),
        }
        for p in operation.params
        if p.location != "path" or p.name in in_path
    ]
    if parameters:
        result["parameters"] = parameters
    if operation.body is not None:
        schema = refs[(operation.body, "validation")]
        result["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        if operation.form is not None:
            result["requestBody"]["content"]["multipart/form-data"] = _form(operation.form, schema)
    return result


def _form(form: Form, json_schema: dict[str, Any]) -> dict[str, Any]:
    files = {"type": "string", "contentMediaType": "application/octet-stream"}  # OpenAPI 3.1: a file's bytes
    return {
        "schema": {
            "type": "object",
            "description": form.description,
            "properties": {
                form.json_part: json_schema,
                form.file_part: {"type": "array", "items": files, "maxItems": MAX_ATTACHMENTS},
            },
            "required": [form.json_part],
            "additionalProperties": False,
        },
        "encoding": {form.json_part: {"contentType": "application/json"}},
    }


def _answer(answer: Answer, refs: dict[Any, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"description": answer.description}
    if answer.headers:
        result["headers"] = {
            name: {"description": text, "schema": {"type": "string"}} for name, text in answer.headers.items()
        }
    if answer.model is not None:
        result["content"] = {"application/json": {"schema": refs[(answer.model, "serialization")]}}
    return result
