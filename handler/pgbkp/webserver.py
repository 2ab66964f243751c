"""The runner's small HTTP server (HTTP_ADDR): ``/metrics``, ``/healthz`` and ``/``, read-only.

The standard library's ThreadingHTTPServer on a daemon thread: a scrape never waits for a backup, and a
stuck client never keeps the runner from exiting. At most MAX_CLIENTS are served at once, and the others
get a 503 at once: threads are the runner's too (upload parts, pings), and a flood of connections that
never finish their request must not use them all up. It knows nothing of backups: the runner passes in the
three answers as functions. There is no authentication; it binds to 127.0.0.1 unless told otherwise, and
docs/local-runner.md shows how to put a reverse proxy with authentication in front of it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pgbkp.config import ConfigError

log = logging.getLogger("pgbkp.webserver")

#: Answers a slow client may take this long to read before its thread gives up on it.
CLIENT_TIMEOUT = 30.0
#: Clients served at once (Prometheus scrapes one at a time; a browser opens a few).
MAX_CLIENTS = 16
_BUSY_BODY = b"busy: too many clients, try again\n"
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" \
    b"Retry-After: 5\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)



@dataclass(frozen=True)
class App:
    """What the server answers. Each function runs on the request's thread."""

    metrics: Callable[[], bytes]
    metrics_type: str
    #: (healthy, why): 200 or 503 with ``why`` as the body.
    healthz: Callable[[], tuple[bool, str]]
    page: Callable[[], str]


class _Handler(BaseHTTPRequestHandler):
    server_version = "pgbkp"
    sys_version = ""
    timeout = CLIENT_TIMEOUT

    def _answer(self, status: int, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if content_type.startswith("text/html"):
            # The page has no script at all, and loads nothing from elsewhere.
            self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                             "img-src 'self' data:; frame-ancestors 'none'")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        app: App = self.server.app  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._answer(200, app.metrics(), app.metrics_type, head)
            elif path == "/healthz":
                ok, why = app.healthz()
                status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
                self._answer(status, f"{'healthy' if ok else 'unhealthy'}: {why}\n".encode(),
                             "text/plain; charset=utf-8", head)
            elif path in ("/", "/index.html"):
                self._answer(200, app.page().encode("utf-8"), "text/html; charset=utf-8", head)
            else:
                self._answer(404, b"not found: try /, /metrics or /healthz\n", "text/plain; charset=utf-8", head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:  # one bad answer must not end the server; the traceback is for LOG_LEVEL=DEBUG
            log.warning("HTTP %s %s failed", self.command, path, exc_info=log.isEnabledFor(logging.DEBUG))
            self._answer(500, b"internal error (see the runner's log)\n", "text/plain; charset=utf-8", head)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def _read_only(self) -> None:
        """A method it knows but does not allow: 405 with the ones it does (the server is read-only)."""
        body = b"read-only: only GET and HEAD\n"
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self._read_only()

    def do_PUT(self) -> None:
        self._read_only()

    def do_DELETE(self) -> None:
        self._read_only()

    def do_PATCH(self) -> None:
        self._read_only()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("HTTP %s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: App, family: int, max_clients: int = MAX_CLIENTS) -> None:
        self.address_family = family
        self.app = app
        self._slots = threading.BoundedSemaphore(max_clients)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per client while a slot is free; else a 503 from the serving loop, without reading."""
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.setblocking(False)  # a fresh socket's send buffer takes these few bytes at once
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._slots.release()  # before the client sees its connection closed
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets or garbles its connection: a debug line, not a traceback on stderr."""
        log.debug("HTTP client %s: connection failed", client_address, exc_info=True)


class WebServer:
    """Started by :func:`start`; :meth:`stop` closes the socket and waits for the serving loop to end."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="pgbkp-http", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start(address: tuple[str, int], app: App, max_clients: int = MAX_CLIENTS) -> WebServer:
    """Listen on ``address`` (HTTP_ADDR) or raise ConfigError naming it and the fix."""
    host, port = address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family = infos[0][0]
        server = _Server((host, port), app, family, max_clients)
    except OSError as exc:
        raise ConfigError(f"HTTP_ADDR: cannot listen on {shown} ({exc.strerror or exc}). Fix: choose a free port "
                          "and an address of this machine, e.g. 127.0.0.1:9187, or set HTTP_ADDR=false.") from None
    return WebServer(server)
