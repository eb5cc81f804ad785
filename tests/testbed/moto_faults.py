"""Faults injected at the cloud's endpoint: a loopback proxy in front of the session's moto.

`FaultyEndpoint` forwards every request to moto unchanged, except EC2 `RunInstances` for an
instance type it was told to refuse: those it answers the way AWS does when a zone has no
capacity left, HTTP 500 with an EC2 XML error body whose code is
`InsufficientInstanceCapacity` (AWS documents it among EC2's server error codes; the
message is the one AWS returns, with the type and zone filled in). Terraform's AWS provider
and the SDK under it see exactly what they would see from AWS, retries included, so the
whole path is real: the SDK's retries, the provider's diagnostic, taskstack's mapping of it
to `NoCapacityError`, and the run's move to the next offer.

The proxy counts what it refused and what it forwarded, per action and instance type.
Network rule: it listens on 127.0.0.1 and connects only to moto on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.testbed.moto import MotoServer

CAPACITY_CODE = "InsufficientInstanceCapacity"

# Headers that describe one hop of a connection, not the message (RFC 9110, 7.6.1).
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer"}
_CAPACITY_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Response><Errors><Error><Code>{code}</Code><Message>We currently do not have "
    "sufficient {instance_type} capacity in the Availability Zone you requested ({zone}). "
    "Our system will be working on provisioning additional capacity. You can currently get "
    "{instance_type} capacity by not specifying an Availability Zone in your request or "
    "choosing a different one.</Message></Error></Errors>"
    "<RequestID>{request_id}</RequestID></Response>"
)


class FaultyEndpoint:
    """A proxy in front of moto that refuses `RunInstances` for chosen instance types."""

    def __init__(self, moto: MotoServer) -> None:
        self.moto = moto
        self.refused: Counter[str] = Counter()
        """Refused `RunInstances` calls, by instance type."""
        self.forwarded: Counter[str] = Counter()
        """Forwarded EC2 calls: `RunInstances:TYPE` for launches, the action otherwise."""
        self._no_capacity: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def server(self) -> MotoServer:
        """The proxy as a `MotoServer`: clients and settings pointed at it reach moto."""
        return MotoServer(url=self.url, pid=self.moto.pid)

    def refuse_capacity(self, instance_type: str) -> None:
        """From now on, answer `RunInstances` for `instance_type` with a capacity error."""
        with self._lock:
            self._no_capacity.add(instance_type)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # -- called by the handler, one thread per connection --------------------------------

    def answer(self, form: dict[str, list[str]]) -> tuple[int, str] | None:
        """The injected answer to an EC2 call, or None to forward it."""
        action = _first(form, "Action")
        instance_type = _first(form, "InstanceType")
        key = f"{action}:{instance_type}" if action == "RunInstances" else action
        with self._lock:
            if action == "RunInstances" and instance_type in self._no_capacity:
                self.refused[instance_type] += 1
                zone = _first(form, "Placement.AvailabilityZone") or "us-east-1a"
                body = _CAPACITY_BODY.format(
                    code=CAPACITY_CODE,
                    instance_type=instance_type,
                    zone=zone,
                    request_id=uuid.uuid4(),
                )
                return 500, body
            if action:
                self.forwarded[key] += 1
        return None


@contextmanager
def faulty_endpoint(moto: MotoServer) -> Iterator[FaultyEndpoint]:
    """A running `FaultyEndpoint` in front of `moto`, stopped on exit."""
    endpoint = FaultyEndpoint(moto)
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


def _handler_for(endpoint: FaultyEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, as AWS's endpoints do: the SDK reuses its connections.
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._proxy()

        def do_POST(self) -> None:
            self._proxy()

        def do_PUT(self) -> None:
            self._proxy()

        def do_DELETE(self) -> None:
            self._proxy()

        def do_HEAD(self) -> None:
            self._proxy()

        def log_message(self, format: str, *args: object) -> None:
            pass  # the SDK's traffic would drown pytest's output

        def _proxy(self) -> None:
            body = self._read_body()
            injected = endpoint.answer(_form(self.headers.get("Content-Type", ""), body))
            if injected is not None:
                status, text = injected
                self._reply(status, [("Content-Type", "text/xml;charset=UTF-8")], text.encode())
                return
            status, headers, answer = self._forward(body)
            self._reply(status, headers, answer)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return _read_chunked(self.rfile)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            target = urllib.parse.urlsplit(endpoint.moto.url)
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            headers = {
                key: value
                for key, value in self.headers.items()
                if key.lower() not in _HOP_HEADERS and key.lower() != "content-length"
            }
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                kept = [
                    (key, value)
                    for key, value in response.getheaders()
                    if key.lower() not in _HOP_HEADERS and key.lower() != "content-length"
                ]
                return response.status, kept, answer
            finally:
                connection.close()

        def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


def _form(content_type: str, body: bytes) -> dict[str, list[str]]:
    """The parameters of an EC2 query-protocol call (a form POST); {} for anything else."""
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return {}
    return urllib.parse.parse_qs(body.decode("utf-8", errors="replace"))


def _first(form: dict[str, list[str]], key: str) -> str:
    return (form.get(key) or [""])[0]


def _read_chunked(stream) -> bytes:
    body = b""
    while True:
        size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return body
        body += stream.read(size)
        stream.readline()  # the chunk's CRLF
