"""A small HTTP proxy in front of the S3 test server that records, delays, faults and can be stopped.

Tests point an S3 client at :attr:`S3Proxy.endpoint` instead of the server itself, then:

- read :attr:`S3Proxy.requests` to see exactly what the client sent (method, path, query, headers);
- :meth:`S3Proxy.stop` / :meth:`S3Proxy.start` to make the store vanish and come back on the same port
  (the listening socket is closed and open connections are dropped, so clients see refused connections);
- :meth:`S3Proxy.fail` to answer chosen requests with an HTTP error, before or after forwarding them;
- :meth:`S3Proxy.delay` to slow chosen requests down, while :attr:`S3Proxy.max_in_flight` counts how many
  matching requests were in flight at once;
- :meth:`S3Proxy.hold` to stop chosen requests at a gate (before forwarding them, or after, with the
  answer held back) until the test releases it: faults and signals driven by "this request is in
  flight now" rather than by sleeps.

The request body is read whole (parts are a few MiB in tests), and the Host header is passed through
unchanged so a server that checks signatures would still accept the request.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "expect"}


@dataclass(frozen=True)
class Request:
    """One request as the client sent it. Header names are lower-cased."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body_size: int
    body: bytes = field(default=b"", repr=False)  # kept only for small requests (XML calls), not parts

    @property
    def operation(self) -> str:
        """The S3 operation this request most likely is (enough for the tests' assertions)."""
        q, m, h = self.query, self.method, self.headers
        if m == "POST" and "delete" in q:
            return "DeleteObjects"
        if m == "POST" and "uploads" in q:
            return "CreateMultipartUpload"
        if m == "POST" and "uploadId" in q:
            return "CompleteMultipartUpload"
        if m == "PUT" and "partNumber" in q:
            return "UploadPartCopy" if "x-amz-copy-source" in h else "UploadPart"
        if m == "PUT" and "x-amz-copy-source" in h:
            return "CopyObject"
        if m == "PUT":
            return "PutObject"
        if m == "DELETE" and "uploadId" in q:
            return "AbortMultipartUpload"
        if m == "DELETE":
            return "DeleteObject"
        if m == "GET" and "uploads" in q:
            return "ListMultipartUploads"
        if m == "GET" and "object-lock" in q:
            return "GetObjectLockConfiguration"
        if m == "GET" and "list-type" in q:
            return "ListObjectsV2"
        if m == "HEAD":
            return "HeadObject" if self.path.strip("/").count("/") >= 1 else "HeadBucket"
        return "GetObject" if m == "GET" else m


Matcher = Callable[[Request], bool]


@dataclass
class _Fault:
    match: Matcher
    status: int
    code: str
    after: bool  # forward first, then answer the error (the server did the work; the client never hears)
    times: int | None  # None: every time


@dataclass
class _Delay:
    match: Matcher
    seconds: float


class Gate:
    """Matching requests wait here until :meth:`release`; :attr:`arrived` is set when the first one does."""

    def __init__(self, match: Matcher, after: bool) -> None:
        self.match, self.after = match, after
        self.arrived = threading.Event()
        self._open = threading.Event()
        self.count = 0

    def wait_arrived(self, timeout: float = 30.0) -> None:
        if not self.arrived.wait(timeout):
            raise TimeoutError("s3proxy: no request reached the gate")

    def release(self) -> None:
        self._open.set()

    def pass_through(self) -> None:
        self.count += 1
        self.arrived.set()
        self._open.wait(120)


@dataclass
class S3Proxy:
    upstream: str  # http://host:port of the real server
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    max_in_flight: int = 0
    _in_flight: int = 0
    _faults: list[_Fault] = field(default_factory=list)
    _delays: list[_Delay] = field(default_factory=list)
    _gates: list[Gate] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _sockets: set[socket.socket] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- control -------------------------------------------------------------------------------------

    def start(self) -> S3Proxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="s3proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every open connection: the store is gone until :meth:`start`."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._lock:
            for gate in self._gates:
                gate.release()
        server.shutdown()
        server.server_close()
        with self._lock:
            socks = list(self._sockets)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> S3Proxy:
        return self if self.running else self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    def start_later(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.start)
        timer.daemon = True
        timer.start()
        return timer

    def fail(self, match: Matcher, status: int = 500, code: str = "InternalError", *, after: bool = False,
             times: int | None = None) -> None:
        """Answer matching requests with ``status``/``code`` (after forwarding them if ``after``)."""
        with self._lock:
            self._faults.append(_Fault(match, status, code, after, times))

    def delay(self, match: Matcher, seconds: float) -> None:
        with self._lock:
            self._delays.append(_Delay(match, seconds))

    def hold(self, match: Matcher, *, after: bool = False) -> Gate:
        """Hold matching requests at a gate until it is released; ``after``: forward them first, so the
        server has done the work while the client still waits for its answer."""
        gate = Gate(match, after)
        with self._lock:
            self._gates.append(gate)
        return gate

    def clear(self) -> None:
        with self._lock:
            for gate in self._gates:
                gate.release()
            self._gates.clear()
            self._faults.clear()
            self._delays.clear()
            self.requests.clear()
            self.max_in_flight = 0

    def ops(self, name: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.operation == name]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("s3proxy: condition not reached")
            time.sleep(0.01)

    # --- used by the handler ------------------------------------------------------------------------

    def _fault_for(self, req: Request) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.match(req) and (f.times is None or f.times > 0):
                    if f.times is not None:
                        f.times -= 1
                    return f
        return None

    def _gate_for(self, req: Request, after: bool) -> Gate | None:
        with self._lock:
            return next((g for g in self._gates if g.after == after and g.match(req)), None)

    def _delay_for(self, req: Request) -> float:
        with self._lock:
            return sum(d.seconds for d in self._delays if d.match(req))

    @contextlib.contextmanager
    def _counting(self, delayed: bool) -> Iterator[None]:
        if not delayed:
            yield
            return
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1


@contextlib.contextmanager
def running(upstream: str) -> Iterator[S3Proxy]:
    proxy = S3Proxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _error_body(code: str, req: Request) -> bytes:
    if not code:
        return b""  # a bare status, as some gateways answer
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected by s3proxy</Message><Resource>{req.path}</Resource></Error>").encode()


class _Handler(BaseHTTPRequestHandler):
    owner: S3Proxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._sockets.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.owner._lock:
            self.owner._sockets.discard(self.connection)

    def _proxy(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = Request(self.command, url.path, parse_qs(url.query, keep_blank_values=True), headers, len(body),
                      body if len(body) <= 64 * 1024 else b"")
        owner = self.owner
        with owner._lock:
            owner.requests.append(req)
        fault = owner._fault_for(req)
        delay = owner._delay_for(req)
        with owner._counting(delay > 0):
            if delay:
                time.sleep(delay)
            if (gate := owner._gate_for(req, after=False)) is not None:
                gate.pass_through()
            if fault is not None and not fault.after:
                self._reply(fault.status, {"Content-Type": "application/xml"}, _error_body(fault.code, req))
                return
            status, out_headers, out_body = self._forward(req, body)
            if (gate := owner._gate_for(req, after=True)) is not None:
                gate.pass_through()
        if fault is not None:
            self._reply(fault.status, {"Content-Type": "application/xml"}, _error_body(fault.code, req))
            return
        self._reply(status, out_headers, out_body, head=self.command == "HEAD")

    def _forward(self, req: Request, body: bytes) -> tuple[int, dict[str, str], bytes]:
        up = urlsplit(self.owner.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            headers = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP}
            return resp.status, headers, data
        finally:
            conn.close()

    def _reply(self, status: int, headers: dict[str, str], body: bytes, *, head: bool = False) -> None:
        self.send_response_only(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "date", "server"):
                self.send_header(name, value)
        upstream_length = next((v for k, v in headers.items() if k.lower() == "content-length"), None)
        self.send_header("Content-Length", upstream_length if head and upstream_length else str(len(body)))
        self.end_headers()
        if not head:
            # The client may have given up on this answer (a stopped run): nothing to report, no traceback.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _proxy  # noqa: N815
