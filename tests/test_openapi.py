"""The published contracts: the OpenAPI document as served, the mail JSON Schema, the documentation's and the `make run`
banner's examples, and the API's real answers held against what the document says of them."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from shared.errors import AppError
from shared.mail import parse_mail
from shared.openapi import mail_schema, openapi_document

from .helpers import documentation, http, run, user_function
from .test_api import LUNCH, WITH_ATTACHMENT, WITH_HEADERS, WITH_MENTIONS

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "schemas" / "mail.schema.json"
DOCUMENT_URI = "urn:notifier:openapi"


def _document_validator(document: dict[str, Any], pointer: str) -> Draft202012Validator:
    """A JSON Schema validator for one schema inside the OpenAPI document, its `$ref`s resolved in the document."""
    registry: Registry[Any] = Registry().with_resource(
        DOCUMENT_URI, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    return Draft202012Validator({"$ref": f"{DOCUMENT_URI}#{pointer}"}, registry=registry)


def _published_validator() -> Draft202012Validator:
    schema = json.loads(PUBLISHED.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _errors(validator: Draft202012Validator, instance: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or 'body'}: {e.message[:200]}" for e in validator.iter_errors(instance)
    ]


# The document as served


def test_the_served_document_is_a_valid_openapi_3_1_document(app_env: dict[str, str]) -> None:
    import function_app

    response = run(user_function(function_app.openapi)(http("GET", "/api/openapi.json")))
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document = json.loads(response.get_body())
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises with the offending part when the document is not valid OpenAPI


def test_the_validator_refuses_what_the_old_document_did_wrong() -> None:
    """The check has teeth: 3.0.3 with a 3.1 construct (`{"type": "null"}`) is refused."""
    document = openapi_document()
    document["openapi"] = "3.0.3"
    with pytest.raises(OpenAPIValidationError):
        validate(document)


def test_every_operation_documents_its_error_answers_in_the_error_shape() -> None:
    document = openapi_document()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                health_report = path.startswith("/health") and status == "503"  # a failing check is a report
                if int(status) >= 400 and not health_report:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)


# The published mail schema


def test_the_published_schema_is_the_one_generated_from_the_models() -> None:
    assert json.loads(PUBLISHED.read_text()) == mail_schema(), "regenerate schemas/mail.schema.json: make schemas"


def _json_examples() -> list[Any]:
    """Every ```json block of the documentation (the README, docs/, the tools' manuals)."""
    return [
        json.loads(block)
        for text in documentation().values()
        for block in re.findall(r"^ *```json\n(.*?)^ *```", text, flags=re.MULTILINE | re.DOTALL)
    ]


def test_every_json_example_in_the_documentation_is_a_mail_the_schema_and_the_api_accept() -> None:
    examples = _json_examples()
    assert examples, "docs/api.md shows a mail as a ```json block"
    validator = _published_validator()
    for example in examples:
        assert _errors(validator, example) == []
        parse_mail(example)  # raises AppError if the API would refuse its shape


def _banner_requests() -> list[tuple[str, str, Any]]:
    """(method, path, JSON body) of every curl in the banner `make run` prints."""
    from devhost.run import banner

    azurite = SimpleNamespace(blob_port=10000, queue_port=10001, table_port=10002)
    text = banner("http://127.0.0.1:7071", "https://127.0.0.1:8790", azurite)  # type: ignore[arg-type]
    requests = []
    for line in text.splitlines():
        if line.strip().startswith("curl ") and " -d " in line:
            words = shlex.split(line)
            url = next(w for w in words if w.startswith("http"))
            requests.append(
                (words[words.index("-X") + 1], urlsplit(url).path, json.loads(words[words.index("-d") + 1]))
            )
    return requests


def _first_ten_minutes_requests() -> list[tuple[str, str, Any]]:
    """(method, path, JSON body or form mail or None) of every curl to the API in the README's first ten minutes,
    with the local URL the section promises."""
    readme = (ROOT / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", readme, flags=re.MULTILINE)
    assert headings[headings.index("The two commands") + 1] == "The first ten minutes"  # right after them
    section = readme.split("## The first ten minutes\n", 1)[1].split("\n## ", 1)[0].replace("\\\n", " ")
    requests = []
    for command in re.findall(r"curl -s [^`\n]+", section):
        words = shlex.split(command)
        url = next(w for w in words if w.startswith("http"))
        if urlsplit(url).port != 7071:
            continue  # the sandbox's mailbox, not the API
        method = words[words.index("-X") + 1] if "-X" in words else "GET"
        body = json.loads(words[words.index("-d") + 1]) if "-d" in words else None
        forms = [words[i + 1] for i, word in enumerate(words) if word == "-F"]
        if forms:
            assert forms[0].startswith("mail=") and forms[0].endswith(";type=application/json"), forms[0]
            body = json.loads(forms[0].removeprefix("mail=").removesuffix(";type=application/json"))
        requests.append((method, urlsplit(url).path, body))
    return requests


def test_the_first_ten_minutes_requests_are_operations_of_the_openapi_document_with_valid_bodies() -> None:
    document = openapi_document()
    prefix = document["servers"][0]["url"]
    requests = _first_ten_minutes_requests()
    templates = {
        re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$"): path for path in document["paths"]
    }
    called = set()
    for method, path, body in requests:
        [template] = [t for pattern, t in templates.items() if pattern.match(path.removeprefix(prefix))]
        operation = document["paths"][template][method.lower()]
        called.add((method, template))
        if body is not None:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert _errors(_document_validator(document, schema["$ref"][1:]), body) == [], (method, path)
        if template == "/mail" and body is not None:
            assert _errors(_published_validator(), body) == []
    assert {("POST", "/mail"), ("GET", "/mail/{id}"), ("POST", "/alerts"), ("POST", "/digests/{name}/run")} <= called


def test_the_banners_requests_are_valid_by_the_openapi_document_and_its_mail_by_the_published_schema() -> None:
    document = openapi_document()
    prefix = document["servers"][0]["url"]
    requests = _banner_requests()
    assert {path for _, path, _ in requests} >= {"/api/mail", "/api/alerts"}
    for method, path, body in requests:
        operation = document["paths"][path.removeprefix(prefix)][method.lower()]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema["$ref"].startswith("#/components/schemas/")
        assert _errors(_document_validator(document, schema["$ref"][1:]), body) == [], (method, path)
        if path == "/api/mail":
            assert _errors(_published_validator(), body) == []


def _sdk_send_mail_body() -> dict[str, Any]:
    """A sendMail body exactly as msgraph-sdk serialises it (PascalCase action parameters)."""
    from kiota_serialization_json.json_serialization_writer import JsonSerializationWriter
    from msgraph.generated.models.body_type import BodyType
    from msgraph.generated.models.email_address import EmailAddress
    from msgraph.generated.models.item_body import ItemBody
    from msgraph.generated.models.message import Message
    from msgraph.generated.models.recipient import Recipient
    from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody

    message = Message(
        subject="From the SDK",
        body=ItemBody(content_type=BodyType.Html, content="<p>hi</p>"),
        to_recipients=[Recipient(email_address=EmailAddress(address="bob@contoso.test", name="Bob"))],
    )
    writer = JsonSerializationWriter()
    writer.write_object_value(None, SendMailPostRequestBody(message=message, save_to_sent_items=False))
    body: dict[str, Any] = json.loads(writer.get_serialized_content())
    return body


ACCEPTED: list[tuple[str, Any]] = [
    ("addresses as strings", {"to": ["a@contoso.test"], "subject": "s", "text": "t"}),
    ("one address as a bare string", {"to": "a@contoso.test", "cc": "b@contoso.test", "text": "t"}),
    (
        "strings and mailboxes mixed",
        {"to": ["a@contoso.test", {"address": "b@contoso.test", "name": "B"}], "replyTo": "r@contoso.test"},
    ),
    ("null optionals", {"to": ["a@contoso.test"], "id": None, "from": None, "text": None, "html": "<p>h</p>"}),
    (
        "everything",
        {
            "id": "x-1",
            "from": "notifications@contoso.test",
            "to": ["a@contoso.test"],
            "bcc": [{"address": "c@contoso.test"}],
            "subject": "s",
            "text": "t",
            "importance": "low",
            "headers": {"x-a": "1"},
            "saveToSentItems": False,
            "attachments": [{"name": "a.txt", "contentBase64": "aGk=", "contentType": "text/plain", "inline": True}],
        },
    ),
    (
        "Graph's own form",
        {
            "message": {
                "subject": "s",
                "body": {"contentType": "HTML", "content": "<p>h</p>"},
                "toRecipients": [{"emailAddress": {"address": "a@contoso.test", "name": "A"}}],
                "from": {"emailAddress": {"address": "support@contoso.test"}},
                "importance": "High",
                "internetMessageHeaders": [{"name": "x-a", "value": "1"}],
                "attachments": [
                    {"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.txt", "contentBytes": "aGk="}
                ],
            },
            "saveToSentItems": False,
            "id": "graph-1",
        },
    ),
    ("Graph's form in other letter cases", {"MESSAGE": {"Subject": "s", "ToRecipients": []}, "saveTOsentITEMS": True}),
    ("Microsoft's sendMail example", LUNCH),
    ("Microsoft's example with headers", WITH_HEADERS),
    ("Microsoft's example with an attachment", WITH_ATTACHMENT),
    ("Microsoft's (beta) example with mentions", WITH_MENTIONS),
    (
        "Graph's form in any case at every level",
        {
            "message": {
                "toRecipients": [{"EmailAddress": {"Address": "a@contoso.test"}}],
                "Attachments": [{"Name": "a.txt", "ContentBytes": "aGk=", "IsInline": "TRUE"}],
            },
            "SaveToSentItems": "False",
        },
    ),
]

REFUSED: list[tuple[str, Any]] = [
    ("a number as recipients", {"to": 7}),
    ("a mailbox without address", {"to": [{"name": "x"}]}),
    ("an unknown field", {"to": "a@contoso.test", "priority": "urgent"}),
    ("an importance outside the list", {"importance": "urgent"}),
    ("saveToSentItems as a string", {"saveToSentItems": "no"}),
    ("a number as subject", {"subject": 42}),
    ("an attachment without content", {"attachments": [{"name": "a"}]}),
    ("Graph: message not an object", {"message": "hi"}),
    ("Graph: an unsupported message field", {"message": {"flag": {}}}),
    ("Graph: an unknown top-level field", {"message": {}, "extra": 1}),
    ("Graph: a recipient that is a string", {"message": {"toRecipients": ["a@b.test"]}}),
    ("Graph: an item attachment", {"message": {"attachments": [{"@odata.type": "#microsoft.graph.itemAttachment"}]}}),
    ("Graph: an rtf body", {"message": {"body": {"contentType": "rtf"}}}),
    ("Graph: saveToSentItems as another word", {"message": {}, "saveToSentItems": "no"}),
    ("Graph: an unknown emailAddress property", {"message": {"toRecipients": [{"emailAddress": {"mail": "a"}}]}}),
    ("Graph: an unsupported attachment property", {"message": {"attachments": [{"contentLocation": "x"}]}}),
    ("Graph: an attachment without a name", {"message": {"attachments": [{"contentBytes": "aGk="}]}}),
]


def test_the_schema_accepts_every_shape_the_api_accepts() -> None:
    validator = _published_validator()
    for what, body in [*ACCEPTED, ("msgraph-sdk's own serialisation", _sdk_send_mail_body())]:
        parse_mail(body)  # the API accepts it (raises otherwise)
        assert _errors(validator, body) == [], what


def test_the_schema_refuses_the_shapes_the_api_refuses() -> None:
    validator = _published_validator()
    for what, body in REFUSED:
        with pytest.raises(AppError):
            parse_mail(body)
        assert _errors(validator, body), what


# Real answers against the document


def _documented(document: dict[str, Any], method: str, path: str, response: Any) -> list[str]:
    """What is wrong with a real answer by the document: its status is listed, and its body fits the schema."""
    answers = document["paths"][path][method]["responses"]
    status = str(response.status_code)
    assert status in answers, f"{method} {path} answered {status}, which the document does not list"
    content = answers[status].get("content")
    if content is None:
        return []
    for header in answers[status].get("headers", {}):
        assert header in response.headers or header == "Idempotent-Replay", (method, path, header)
    pointer = content["application/json"]["schema"]["$ref"][1:]
    return _errors(_document_validator(document, pointer), json.loads(response.get_body()))


def test_the_apis_real_answers_are_what_the_document_says(app_env: dict[str, str]) -> None:
    import function_app

    document = openapi_document()

    def call(function: Any, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        response = run(user_function(function)(http(method.upper(), "/api" + path, body, **kwargs)))
        template = next(
            p for p in document["paths"] if re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", p), path.split("?")[0])
        )
        assert _documented(document, method, template, response) == [], (method, path, response.get_body())
        return response

    mail = {"to": ["alice@contoso.test"], "subject": "Contract", "text": "t"}
    queued = json.loads(call(function_app.post_mail, "post", "/mail", mail).get_body())
    call(function_app.post_mail, "post", "/mail", {**mail, "id": queued["id"]})  # the replay
    call(function_app.post_mail, "post", "/mail", {"to": 7})  # 400
    call(function_app.get_mail, "get", f"/mail/{queued['id']}", route={"id": queued["id"]})
    call(function_app.get_mail, "get", "/mail/nope", route={"id": "nope"})  # 404

    alert = {"name": "DiskFilling", "severity": "critical", "summary": "/var is 95% full"}
    call(function_app.post_alerts, "post", "/alerts", alert)
    dry = call(
        function_app.post_alerts,
        "post",
        "/alerts/generic",
        alert,
        route={"source": "generic"},
        params={"dryRun": "true"},
    )
    assert json.loads(dry.get_body())["mails"], "the dry run shows the mail the critical alert would get"
    call(function_app.post_alerts, "post", "/alerts/nagios", alert, route={"source": "nagios"})  # 404

    digest = {"route": {"name": "support-new"}, "raw": b""}
    preview = call(function_app.run_digest, "post", "/digests/support-new/run", params={"dryRun": "true"}, **digest)
    assert json.loads(preview.get_body())["outcome"] == "dry_run"
    sent = call(function_app.run_digest, "post", "/digests/support-new/run", **digest)
    assert json.loads(sent.get_body())["outcome"] == "sent"
    again = call(function_app.run_digest, "post", "/digests/support-new/run", **digest)
    assert json.loads(again.get_body())["outcome"] == "nothing_new"

    alert_digest = {"route": {"receiver": "alert-digest"}, "raw": b""}
    call(function_app.post_alerts, "post", "/alerts", {**alert, "severity": "warning"})  # kept for the digest
    path = "/alert-digests/alert-digest/run"
    preview = call(function_app.run_alert_digest, "post", path, params={"dryRun": "true"}, **alert_digest)
    assert json.loads(preview.get_body())["outcome"] == "dry_run"
    assert json.loads(call(function_app.run_alert_digest, "post", path, **alert_digest).get_body())["outcome"] == "sent"
    call(function_app.run_alert_digest, "post", "/alert-digests/oncall/run", route={"receiver": "oncall"}, raw=b"")
    call(function_app.run_alert_digest, "post", "/alert-digests/nobody/run", route={"receiver": "nobody"}, raw=b"")

    call(function_app.health, "get", "/health")


def test_the_document_describes_the_multipart_form_of_a_mail_and_its_answers(app_env: dict[str, str]) -> None:
    import function_app

    from .test_attachments import FORM_TYPE, file_part, form, mail_part

    document = openapi_document()
    content = document["paths"]["/mail"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    multipart = content["multipart/form-data"]
    assert multipart["schema"]["properties"]["mail"] == content["application/json"]["schema"]
    assert multipart["schema"]["properties"]["attachment"]["items"]["contentMediaType"] == "application/octet-stream"
    assert multipart["schema"]["required"] == ["mail"]
    assert multipart["encoding"] == {"mail": {"contentType": "application/json"}}
    attachment = document["components"]["schemas"]["Attachment"]
    assert {"blob", "size", "sha256"} <= set(attachment["properties"])

    def post(body: bytes) -> Any:
        request = http("POST", "/api/mail", raw=body, headers={"Content-Type": FORM_TYPE})
        response = run(user_function(function_app.post_mail)(request))
        assert _documented(document, "post", "/mail", response) == [], response.get_body()
        return response

    assert post(form(mail_part(), file_part("a.pdf", b"%PDF"))).status_code == 202
    assert post(form(file_part("a.pdf", b"%PDF"))).status_code == 400
    too_big = form(mail_part(), file_part("a.pdf", b"0" * (41 * 1024 * 1024)))  # the default limit is 35 MiB
    assert post(too_big).status_code == 413
