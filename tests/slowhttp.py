"""A health-check endpoint that answers as slowly as the test says: the status line and headers at once,
then the body one byte per token the test gives. No sleeps: every step is an event the test drives or
waits for."""

from __future__ import annotations

import http.server
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

BODY_SIZE = 100


class Dribbler:
    """``url`` is a healthchecks-style URL on 127.0.0.1. ``requests`` holds the paths asked for;
    ``arrived`` is set once the first request's headers have been answered; ``sent`` counts body bytes;
    ``answered`` counts answers sent whole; ``hung_up`` counts clients that closed their connection
    before the whole answer came."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.arrived = threading.Event()
        self.sent = 0
        self.answered = 0
        self.hung_up = 0
        self._cond = threading.Condition()
        self._tokens = 0
        self._closing = False
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", str(BODY_SIZE))
                self.end_headers()
                self.wfile.flush()
                with owner._cond:
                    owner.requests.append(self.path)
                gone = threading.Event()
                threading.Thread(target=owner._watch, args=(self.connection, gone), daemon=True).start()
                owner.arrived.set()
                for _ in range(BODY_SIZE):
                    if not owner._take(gone):
                        return
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return  # the client gave up
                    with owner._cond:
                        owner.sent += 1
                        owner._cond.notify_all()
                with owner._cond:
                    owner.answered += 1
                    owner._cond.notify_all()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/ping/{uuid.uuid4()}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _watch(self, conn: socket.socket, gone: threading.Event) -> None:
        """The client sends nothing after its request: a read returns only when it closes the connection."""
        try:
            data = conn.recv(1)
        except OSError:
            data = b""
        if not data:
            with self._cond:
                gone.set()
                self.hung_up += 1
                self._cond.notify_all()

    def _take(self, gone: threading.Event) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self._tokens > 0 or self._closing or gone.is_set())
            if self._closing or gone.is_set():
                return False
            self._tokens -= 1
            return True

    def wait_hung_up(self, n: int) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.hung_up >= n, timeout=60):
                raise TimeoutError("slowhttp: the client did not hang up")

    def give(self, n: int) -> None:
        """Let ``n`` more body bytes go out, and wait until they have."""
        with self._cond:
            target = self.sent + n
            self._tokens += n
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self.sent >= target, timeout=60):
                raise TimeoutError("slowhttp: the bytes did not go out")

    def close(self) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def dribbling() -> Iterator[Dribbler]:
    server = Dribbler()
    try:
        yield server
    finally:
        server.close()
