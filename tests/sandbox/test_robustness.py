"""Bad input never crashes the sandbox: each gets a Graph-shaped error, and the sandbox still serves."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx

from sandbox.launcher import SandboxProcess

from ..helpers import SENDER, SUPPORT, bearer

SEND = f"/v1.0/users/{SENDER}/sendMail"


def _cases(auth: dict[str, str]) -> list[tuple[str, str, dict[str, Any], int]]:
    """(method, url, request kwargs, expected status)."""
    json_headers = {**auth, "Content-Type": "application/json"}
    recipient = {"emailAddress": {"address": "bob@contoso.test"}}
    return [
        ("POST", SEND, {"content": b"{not json", "headers": json_headers}, 400),
        ("POST", SEND, {"content": b"", "headers": json_headers}, 400),
        ("POST", SEND, {"content": b"\xff\xfe\x00garbage", "headers": json_headers}, 400),
        ("POST", SEND, {"content": b"[1, 2, 3]", "headers": json_headers}, 400),
        ("POST", SEND, {"content": b"[" * 100_000, "headers": json_headers}, 400),
        ("POST", SEND, {"json": {"message": "hello"}, "headers": auth}, 400),
        ("POST", SEND, {"json": {"message": {"subject": 5, "toRecipients": [recipient]}}, "headers": auth}, 400),
        ("POST", SEND, {"json": {"message": {"toRecipients": "bob@contoso.test"}}, "headers": auth}, 400),
        ("POST", SEND, {"json": {"message": {"toRecipients": [{"emailAddress": "bob"}]}}, "headers": auth}, 400),
        (
            "POST",
            SEND,
            {"json": {"message": {"toRecipients": [recipient], "body": {"contentType": "pdf"}}}, "headers": auth},
            400,
        ),
        (
            "POST",
            SEND,
            {"json": {"message": {"toRecipients": [recipient]}, "saveToSentItems": "no"}, "headers": auth},
            400,
        ),
        (
            "POST",
            SEND,
            {
                "json": {
                    "message": {
                        "toRecipients": [recipient],
                        "attachments": [
                            {"@odata.type": "#microsoft.graph.fileAttachment", "name": "a", "contentBytes": "%%%"}
                        ],
                    }
                },
                "headers": auth,
            },
            400,
        ),
        ("POST", SEND, {"content": b"x" * (4 * 1024 * 1024 + 1), "headers": json_headers}, 413),
        (
            "POST",
            SEND,
            {"json": {"message": {"subject": "x" * (5 * 1024 * 1024), "toRecipients": [recipient]}}, "headers": auth},
            413,
        ),
        (
            "POST",
            "/v1.0/users/nobody@contoso.test/sendMail",
            {"json": {"message": {"toRecipients": [recipient]}}, "headers": auth},
            404,
        ),
        ("GET", "/v1.0/users/nobody@contoso.test/messages", {"headers": auth}, 404),
        ("GET", f"/v1.0/users/{SUPPORT}/messages", {"headers": {"Authorization": "Bearer x.y.z"}}, 401),
        ("GET", f"/v1.0/users/{SUPPORT}/messages", {"headers": {"Authorization": "Basic Zm9vOmJhcg=="}}, 401),
        ("GET", f"/v1.0/users/{SUPPORT}/messages", {}, 401),
        ("GET", "/v1.0/nonsense/path", {"headers": auth}, 400),
        ("GET", f"/v1.0/users/{SUPPORT}/messages?$top=99999999999999999999", {"headers": auth}, 400),
        ("GET", f"/v1.0/users/{SUPPORT}/messages?$filter=" + "(" * 5000, {"headers": auth}, 400),
        ("DELETE", f"/v1.0/users/{SUPPORT}/messages", {"headers": auth}, 405),
        ("PATCH", f"/v1.0/users/{SUPPORT}/messages/AAMkAGx=", {"content": b"{", "headers": json_headers}, 400),
        ("POST", "/v1.0/$batch", {"content": b'{"requests": 5}', "headers": json_headers}, 400),
        ("POST", "/v1.0/$batch", {"json": {"requests": [{"id": "1"}]}, "headers": auth}, 400),
        (
            "POST",
            "/v1.0/$batch",
            {
                "json": {"requests": [{"id": "1", "method": "GET", "url": "/users/x", "dependsOn": ["2"]}]},
                "headers": auth,
            },
            400,
        ),
        ("GET", "/v1.0/$batch", {"headers": auth}, 405),
    ]


def test_a_barrage_of_bad_requests_gets_graph_errors_and_the_sandbox_keeps_serving(sandbox: SandboxProcess) -> None:
    auth = bearer(sandbox)
    assert sandbox.control is not None
    for method, url, kwargs, status in _cases(auth):
        answer = sandbox.control.request(method, url, **kwargs)
        assert answer.status_code == status, (method, url[:80], answer.status_code, answer.text[:200])
        error = answer.json()["error"]
        assert error["code"] and error["message"], url
        assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}

    assert sandbox.sent() == []
    assert sandbox.control.get("/_sandbox/health").json()["status"] == "ok"
    ok = sandbox.control.post(
        SEND,
        headers=auth,
        json={
            "message": {"subject": "still here", "toRecipients": [{"emailAddress": {"address": "bob@contoso.test"}}]}
        },
    )
    assert ok.status_code == 202


def test_bad_control_requests_are_refused_clearly(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    control = sandbox.control
    assert control.post("/_sandbox/reset", content=b"{nope").status_code == 400
    assert control.post("/_sandbox/reset", json={"tenant": {}}).status_code == 400
    assert control.post(f"/_sandbox/users/{SUPPORT}/messages", json={"subject": "not a list"}).status_code == 400
    assert control.post("/_sandbox/users/nobody@contoso.test/messages", json=[]).status_code == 404
    assert control.get("/_sandbox/requests", params={"since": "x"}).status_code == 400
    assert control.post("/_sandbox/apps/unknown/secrets", json={"secret": "s"}).status_code == 404
    assert control.post("/_sandbox/keyvault/secrets/x", json={"value": 5}).status_code == 400
    assert isinstance(control.get("/_sandbox/health").json(), dict)


def test_a_client_that_hangs_up_early_does_not_hurt(sandbox: SandboxProcess) -> None:
    with httpx.Client(verify=False, timeout=0.001) as impatient:  # noqa: S501 - the point is to hang up
        for _ in range(5):
            with contextlib.suppress(httpx.HTTPError):
                impatient.get(f"{sandbox.url}/v1.0/users/{SUPPORT}/messages?$top=1000")
    assert sandbox.control is not None
    assert sandbox.control.get("/_sandbox/health").status_code == 200
