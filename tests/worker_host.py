"""A minimal Functions host for tests: a FunctionRpc gRPC server, and Microsoft's Python worker launched and
driven the way the Functions host (v4) does it (see ../shared/tools/README.md).

The worker dials in, opens the bidirectional EventStream with StartStream; the host then sends requests on
the stream and waits for the matching responses. Everything the worker forwards as RpcLog is kept in `logs`.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import queue
import subprocess
import sys
import sysconfig
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

MAX_MESSAGE = 2147483647


@functools.cache
def load_protos(worker_dir: Path) -> ModuleType:
    """The worker's generated protos, imported from the unpacked worker without putting the rest of it (its
    own azure-functions, grpc, protobuf) on this process's path."""
    shim = worker_dir.parent / "protos-only"
    shim.mkdir(exist_ok=True)
    (shim / "azure_functions_worker").symlink_to(worker_dir / "azure_functions_worker", target_is_directory=True)
    sys.path.append(str(shim))
    return importlib.import_module("azure_functions_worker.protos")


class WorkerHost:
    """One worker process and the gRPC server it talks to."""

    def __init__(self, worker_dir: Path, app_dir: Path, settings: dict[str, str], log: Path) -> None:
        self.protos = load_protos(worker_dir)
        self.worker_dir = worker_dir
        self.app_dir = app_dir
        self.outgoing: queue.Queue[Any] = queue.Queue()
        self.received: list[Any] = []
        self.logs: list[Any] = []
        self.changed = threading.Condition()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            options=[("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)],
        )
        self.protos.add_FunctionRpcServicer_to_server(_Servicer(self), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        worker_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
        self.log = log
        self.output = log.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "azure_functions_worker",
                *("--host", "127.0.0.1", "--port", str(self.port), "--workerId", worker_id),
                *("--requestId", request_id, "--grpcMaxMessageLength", str(MAX_MESSAGE)),
                *("--functions-uri", f"http://127.0.0.1:{self.port}/", "--functions-worker-id", worker_id),
                *("--functions-request-id", request_id, "--functions-grpc-max-message-length", str(MAX_MESSAGE)),
            ],
            cwd=app_dir,
            env=settings,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        try:
            start = self._wait_for(lambda m: m.WhichOneof("content") == "start_stream", 60, "StartStream")
        except BaseException:
            self.stop()
            raise
        assert start.start_stream.worker_id == worker_id

    # -- the stream ------------------------------------------------------------------------------------------
    def _arrived(self, message: Any) -> None:
        with self.changed:
            if message.WhichOneof("content") == "rpc_log":
                self.logs.append(message.rpc_log)
            else:
                self.received.append(message)
            self.changed.notify_all()

    def _wait_for(self, match: Callable[[Any], bool], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((m for m in self.received if match(m)), None)
                if found is not None:
                    self.received.remove(found)
                    return found
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the worker sent no {what}:\n{self.log.read_text()}")
                self.changed.wait(0.2)

    def request(self, kind: str, body: Any, answer: str, timeout: float = 60, **match: str) -> Any:
        """Send `kind` and wait for the `answer` message whose fields equal `match`."""
        self.outgoing.put(self.protos.StreamingMessage(request_id=str(uuid.uuid4()), **{kind: body}))

        def fits(message: Any) -> bool:
            if message.WhichOneof("content") != answer:
                return False
            content = getattr(message, answer)
            return all(getattr(content, name) == value for name, value in match.items())

        return getattr(self._wait_for(fits, timeout, answer), answer)

    # -- the host's requests ---------------------------------------------------------------------------------
    def init(self) -> Any:
        request = self.protos.WorkerInitRequest(
            host_version="4.34.0", worker_directory=str(self.worker_dir), function_app_directory=str(self.app_dir)
        )
        return self.request("worker_init_request", request, "worker_init_response")

    def metadata(self) -> Any:
        request = self.protos.FunctionsMetadataRequest(function_app_directory=str(self.app_dir))
        return self.request("functions_metadata_request", request, "function_metadata_response")

    def load(self, metadata: Any) -> Any:
        request = self.protos.FunctionLoadRequest(function_id=metadata.function_id, metadata=metadata)
        return self.request(
            "function_load_request", request, "function_load_response", function_id=metadata.function_id
        )

    def invoke(self, metadata: Any, data: Any, trigger_metadata: dict[str, Any] | None = None) -> Any:
        """Invoke a function with `data` (a TypedData) as its trigger; returns the InvocationResponse."""
        trigger = next(name for name, b in metadata.bindings.items() if b.type.endswith("Trigger"))
        invocation_id = str(uuid.uuid4())
        request = self.protos.InvocationRequest(
            invocation_id=invocation_id,
            function_id=metadata.function_id,
            input_data=[self.protos.ParameterBinding(name=trigger, data=data)],
            trigger_metadata=trigger_metadata or {},
        )
        return self.request("invocation_request", request, "invocation_response", invocation_id=invocation_id)

    # -- trigger data as the host builds it ------------------------------------------------------------------
    def http(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        route: dict[str, str] | None = None,
    ) -> Any:
        """RpcHttp: header names lower-cased; the body only when Content-Length > 0; route parameters in
        `params`."""
        names = {k.lower(): v for k, v in (headers or {}).items()}
        if body:
            names["content-length"] = str(len(body))
        http = self.protos.RpcHttp(
            method=method,
            url=url,
            headers=names,
            params=route or {},
            body=self.protos.TypedData(bytes=body) if body else None,
        )
        return self.protos.TypedData(http=http)

    def queue_message(self, message: Any) -> tuple[Any, dict[str, Any]]:
        """A received azure-storage-queue message as the queue trigger's data and metadata."""
        typed = self.protos.TypedData

        def when(moment: datetime | None) -> Any:
            return typed(json=json.dumps(moment.strftime("%Y-%m-%dT%H:%M:%S+00:00") if moment else None))

        metadata = {
            "Id": typed(string=message.id),
            "DequeueCount": typed(json=str(message.dequeue_count)),  # the worker reads no `int` kind
            "PopReceipt": typed(string=message.pop_receipt),
            "InsertionTime": when(message.inserted_on),
            "ExpirationTime": when(message.expires_on),
            "NextVisibleTime": when(message.next_visible_on),
        }
        return typed(string=message.content), metadata

    def timer(self, past_due: bool = False) -> Any:
        return self.protos.TypedData(
            json=json.dumps({"Schedule": {"AdjustForDST": True}, "ScheduleStatus": None, "IsPastDue": past_due})
        )

    def stop(self) -> None:
        """End the stream (the worker has no shutdown hook), then stop the process and the server."""
        self.outgoing.put(None)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.server.stop(grace=None)
        self.output.close()


class _Servicer:
    """FunctionRpc.EventStream: what the host sends comes from `outgoing`; what the worker sends is read on a
    thread of its own into the host."""

    def __init__(self, host: WorkerHost) -> None:
        self.host = host

    def EventStream(self, incoming: Iterator[Any], context: Any) -> Iterator[Any]:
        def read() -> None:
            try:
                for message in incoming:
                    self.host._arrived(message)
            except grpc.RpcError:
                pass  # the stream ended

        threading.Thread(target=read, daemon=True).start()
        while True:
            message = self.host.outgoing.get()
            if message is None:
                return
            yield message


def worker_settings(worker_dir: Path, app_dir: Path, app_settings: dict[str, str]) -> dict[str, str]:
    """The worker's environment as the host sets it: the app settings, the script root, and PYTHONPATH with
    the user's packages first (this venv's, so the app's azure-functions wins over the worker's own)."""
    site_packages = sysconfig.get_paths()["purelib"]
    return {
        **app_settings,
        "AzureWebJobsScriptRoot": str(app_dir),
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "FUNCTIONS_WORKER_RUNTIME_VERSION": f"{sys.version_info.major}.{sys.version_info.minor}",
        "PYTHONPATH": os.pathsep.join([site_packages, str(worker_dir)]),
    }
