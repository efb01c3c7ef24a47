"""The OpenAPI 3 description of the HTTP API (`GET /api/openapi.json`) and the published mail schema."""

from __future__ import annotations

from typing import Any

from .mail import MailRequest

SCHEMA_ID = "https://schemas.notifier.invalid/mail.schema.json"


def mail_schema() -> dict[str, Any]:
    """JSON Schema of the app's mail (also published as `schemas/mail.schema.json`)."""
    schema = MailRequest.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def openapi_document() -> dict[str, Any]:
    mail = mail_schema()
    definitions = mail.pop("$defs", {})
    mail.pop("$schema", None)
    mail.pop("$id", None)
    components = {name: _rebase(schema) for name, schema in definitions.items()}
    components["MailRequest"] = _rebase(mail)
    components["GraphSendMail"] = {
        "type": "object",
        "required": ["message"],
        "properties": {
            "message": {"type": "object", "description": "A Graph message (subject, body, toRecipients, ...)"},
            "saveToSentItems": {"type": "boolean"},
            "id": {"type": "string"},
        },
    }
    components["MailStatus"] = {
        "type": "object",
        "required": ["id", "status", "attempts", "updated"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["queued", "sending", "sent", "failed"]},
            "attempts": {"type": "integer"},
            "updated": {"type": "string", "format": "date-time"},
            "error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
        },
    }
    components["DigestRun"] = {
        "type": "object",
        "required": ["name", "outcome", "messages", "folders"],
        "properties": {
            "name": {"type": "string"},
            "outcome": {"enum": ["sent", "nothing_new", "dry_run"]},
            "messages": {"type": "integer"},
            "folders": {
                "type": "array",
                "items": {"type": "object", "properties": {"path": {"type": "string"}, "count": {"type": "integer"}}},
            },
            "mailId": {"type": "string"},
            "tagged": {"type": "integer"},
            "untagged": {"type": "integer"},
            "resumedEarlierRun": {"type": "boolean"},
            "mail": {"type": "object", "description": "dry runs: from, to, subject, html, text"},
        },
    }
    components["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                        },
                    },
                },
            }
        },
    }
    key: list[dict[str, list[str]]] = [{"functionKey": []}]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Graph mail notifier",
            "version": "1.0.0",
            "description": "Mail, alerts and digests through Microsoft Graph.",
        },
        "servers": [{"url": "/api"}],
        "components": {
            "schemas": components,
            "securitySchemes": {"functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"}},
        },
        "paths": {
            "/mail": {
                "post": {
                    "summary": "Queue a mail",
                    "security": key,
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/MailRequest"},
                                        {"$ref": "#/components/schemas/GraphSendMail"},
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "Queued",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"id": {"type": "string"}, "status": {"enum": ["queued"]}},
                                    }
                                }
                            },
                        },
                        "400": _error("Invalid mail"),
                        "409": _error("Id used for another mail"),
                        "413": _error("Body too large"),
                        "415": _error("Not JSON"),
                        "503": _error("Storage unavailable"),
                    },
                }
            },
            "/mail/{id}": {
                "get": {
                    "summary": "A mail's status",
                    "security": key,
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {
                            "description": "Status",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MailStatus"}}},
                        },
                        "400": _error("Invalid id"),
                        "404": _error("No such mail"),
                    },
                }
            },
            "/alerts": {"post": _alerts_operation(key, named=False)},
            "/alerts/{source}": {"post": _alerts_operation(key, named=True)},
            "/digests/{name}/run": {
                "post": {
                    "summary": "Run a configured mailbox digest now",
                    "security": key,
                    "parameters": [
                        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "dryRun", "in": "query", "schema": {"type": "boolean"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "What the run did (or, dry, the mail it would send)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DigestRun"}}},
                        },
                        "404": _error("No digest of that name"),
                        "502": _error("Graph refused the digest's mailbox (Graph's code)"),
                        "503": _error("Storage unavailable"),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Configuration, storage, Key Vault and Graph token checks",
                    "security": [],
                    "responses": {"200": {"description": "Healthy"}, "503": {"description": "Degraded"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3"}}}
            },
        },
    }


def _alerts_operation(key: list[dict[str, list[str]]], named: bool) -> dict[str, Any]:
    sources = ["alertmanager", "grafana", "azuremonitor", "generic"]
    parameters: list[dict[str, Any]] = [
        {"name": "dryRun", "in": "query", "schema": {"type": "boolean"}, "description": "Answer the mails only"}
    ]
    if named:
        parameters.insert(0, {"name": "source", "in": "path", "required": True, "schema": {"enum": sources}})
    group = {
        "type": "object",
        "properties": {
            "key": {"type": "string"},
            "receiver": {"type": "string"},
            "mode": {"enum": ["immediate", "digest"]},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "alerts": {"type": "integer"},
        },
    }
    accepted = {
        "type": "object",
        "properties": {
            "accepted": {"type": "integer"},
            "groups": {"type": "array", "items": group},
            "mails": {"type": "array", "items": {"type": "object"}, "description": "dry runs only"},
        },
    }
    return {
        "summary": "Alerts from " + ("the named source" if named else "a source detected from the payload"),
        "security": key,
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "description": "A webhook payload of " + ", ".join(sources)}
                }
            },
        },
        "responses": {
            "202": {"description": "Recorded in their groups", "content": {"application/json": {"schema": accepted}}},
            "200": {"description": "Dry run", "content": {"application/json": {"schema": accepted}}},
            "400": _error("Not an alert payload of the source"),
            "401": _error("The source's bearer token or signature is missing or wrong"),
            "404": _error("Unknown source"),
            "413": _error("Body too large"),
            "415": _error("Not JSON"),
            "503": _error("Storage or Key Vault unavailable"),
        },
    }


def _rebase(schema: Any) -> Any:
    """Point `#/$defs/X` references at `#/components/schemas/X`."""
    if isinstance(schema, dict):
        return {
            k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else _rebase(v))
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_rebase(item) for item in schema]
    return schema
