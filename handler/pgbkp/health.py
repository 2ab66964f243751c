"""Health of the local runner: pings to a healthchecks.io-style URL, and a status file for Docker.

A ping must never be the reason a backup fails, starts late or cannot stop. So each ping has a total
deadline (not only a per-read timeout, which a server that sends a byte every few seconds never hits),
and :class:`Pinger` sends them one after another on a daemon thread that nobody waits for, except for
a few seconds at exit. A ping that fails or misses its deadline is logged once and dropped.

``pgbkp serve`` rewrites the status file at start and around every run; ``pgbkp health`` (the
container's HEALTHCHECK) reads it and says unhealthy when the last run failed, or when no run
succeeded within two schedule periods. The reader trusts nothing in the file: whatever it holds, the
answer is one line and exit 0 or 1.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import socket
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from http.client import HTTPException
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from pgbkp import schedule
from pgbkp.config import ConfigError
from pgbkp.output import EXIT_FAILED, EXIT_OK
from pgbkp.redact import redact, register

log = logging.getLogger("pgbkp.health")

#: The status file of a runner started as root (the container), as the original named it.
DEFAULT_HEALTH_FILE = "/tmp/pgbkp-health.json"
#: The total time one ping may take: connecting, sending, and reading the answer.
PING_TIMEOUT = 10.0
#: How long ``pgbkp serve`` waits at exit for pings still queued or in flight.
EXIT_PING_WAIT = 5.0
#: Pings queued behind a slow endpoint beyond this many are dropped, oldest first.
MAX_QUEUED_PINGS = 8
#: healthchecks.io keeps the first 100 kB of a ping body.
MAX_BODY = 100_000
#: Of an answer we read at most this much: its body means nothing to us.
MAX_ANSWER = 65_536
#: A status file is a few kB; anything this big was not written by pgbkp serve.
MAX_STATUS_BYTES = 16 * 1024 * 1024
PING_PATHS = {"start": "/start", "success": "", "fail": "/fail"}


def default_file() -> str:
    """Root keeps the original name (the container); any other user gets its own file, so that runners of
    different users on one host do not overwrite each other's status."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return DEFAULT_HEALTH_FILE if uid == 0 else f"/tmp/pgbkp-health-{uid}.json"


# --------------------------------------------------------------------------------------------------
# Waking a waiter from a signal handler


class Alarm:
    """A flag that a signal handler may raise, and a wait that it ends.

    ``threading.Event`` cannot be used from a handler: the handler runs between two bytecodes of the main
    thread, which may hold the Event's lock at that moment, and would then wait for it for ever. Setting
    this takes no Python-level lock: a flag, then a token into a ``queue.SimpleQueue``, whose ``put`` is
    documented as safe to call from such reentrant contexts."""

    def __init__(self) -> None:
        self._flag = False
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()

    def set(self) -> None:
        self._flag = True
        self._tokens.put(None)

    def is_set(self) -> bool:
        return self._flag

    def poke(self) -> None:
        """Wake a waiter without setting the flag: "something changed, look again"."""
        self._tokens.put(None)

    def wait(self, timeout: float | None = None) -> bool:
        """Until set, poked, or ``timeout`` seconds; returns whether it is set."""
        if not self._flag:
            with contextlib.suppress(queue.Empty):
                self._tokens.get(timeout=None if timeout is None else max(timeout, 0.0))
        return self._flag


# --------------------------------------------------------------------------------------------------
# Pings


class _Timer(Protocol):
    def start(self) -> None: ...

    def cancel(self) -> None: ...


#: ``timer(seconds, action)``: runs ``action`` once ``seconds`` have passed unless cancelled first.
TimerFactory = Callable[[float, Callable[[], None]], _Timer]


def _daemon_timer(seconds: float, action: Callable[[], None]) -> _Timer:
    timer = threading.Timer(seconds, action)
    timer.daemon = True  # a pending deadline must not keep the process alive
    return timer


class _Deadline:
    """The total time one exchange may take. When it is up, the exchange's sockets are shut down, which
    ends a read or write in progress at once, whatever the per-read timeout.

    Each socket is watched through a duplicate of its descriptor: shutdown acts on the connection, which
    both share, and the duplicate stays valid even after TLS has taken the original over."""

    def __init__(self, seconds: float, timer: TimerFactory) -> None:
        self.seconds = seconds
        self.expired = False
        self._done = False
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._timer = timer(seconds, self._expire)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True
            for s in self._watched:
                s.close()
            self._watched.clear()

    def connect(self, address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
        """http.client's ``_create_connection``: ``socket.create_connection``, then watched."""
        sock = socket.create_connection(address, timeout, source_address)
        try:
            watcher = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            sock.close()
            raise
        with self._lock:
            self._watched.append(watcher)
            if self.expired:  # connecting (or resolving the name) used the whole deadline
                _shut(watcher)
        return sock

    def _expire(self) -> None:
        with self._lock:  # held while shutting down, so that __exit__ cannot close a socket under us
            if self._done:
                return
            self.expired = True
            for s in self._watched:
                _shut(s)

    def wrap(self, http_class: Any) -> Any:
        """A connection class whose sockets this deadline watches."""

        def make(host: str, **kwargs: Any) -> Any:
            conn = http_class(host, **kwargs)
            conn._create_connection = self.connect
            return conn

        return make


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer: nothing left to end
        sock.shutdown(socket.SHUT_RDWR)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self._deadline.wrap(http_class), req, **kwargs)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self._deadline.wrap(http_class), req, **kwargs)


def where(url: str) -> str:
    """What a log line may say about a ping URL: its host. The path and query hold the check's token."""
    return urllib.parse.urlsplit(url).hostname or "?"


def _register_secrets(url: str) -> None:
    """The whole URL, its path and query (the token), and a password in it are scrubbed from every log."""
    parts = urllib.parse.urlsplit(url)
    register(url)
    rest = urllib.parse.urlunsplit(("", "", parts.path, parts.query, parts.fragment))
    if len(rest.strip("/")) >= 8:  # a bare "/ping" would only turn ordinary words into noise
        register(rest)
    if parts.password:
        register(parts.password)


def _send(url: str, kind: str, body: str, timeout: float, timer: TimerFactory) -> bool:
    """One ping, over in ``timeout`` seconds whatever the server does (but see :func:`ping` on DNS)."""
    data = body.encode("utf-8")[:MAX_BODY]
    headers = {"Content-Type": "text/plain; charset=utf-8", "User-Agent": "pgbkp"}
    # check_url() allowed http(s) only
    request = urllib.request.Request(url + PING_PATHS[kind], data=data, method="POST", headers=headers)  # noqa: S310
    host = where(url)
    with _Deadline(timeout, timer) as deadline:
        opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline))
        try:
            with opener.open(request, timeout=timeout) as resp:
                resp.read(MAX_ANSWER)
            error = None
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, HTTPException, ValueError) as exc:
            error = redact(str(getattr(exc, "reason", exc)) or type(exc).__name__)
    if deadline.expired:
        log.warning("health ping %r to %s got no complete answer within %ss: dropped (the backup itself is not "
                    "affected)", kind, host, f"{timeout:g}")
        return False
    if error is not None:
        log.warning("health ping %r to %s failed: %s (the backup itself is not affected)", kind, host, error)
        return False
    log.debug("health ping %r to %s sent", kind, host)
    return True


def ping(url: str | None, kind: str, body: str = "", *, timeout: float = PING_TIMEOUT) -> bool:
    """Send one ping (``kind``: start, success or fail) and wait for it, ``timeout`` seconds at most in all.

    For a caller that has nothing better to do meanwhile (``pgbkp backup`` at its end). A failure is
    logged and returns False, never raises; a bad URL is a :class:`ConfigError`. Resolving the host name
    is the one step the deadline cannot cut short; :class:`Pinger` does not wait for it at all."""
    checked = check_url(url)
    if not checked:
        return False
    if kind not in PING_PATHS:
        raise ValueError(f"ping: kind {kind!r} is not one of {', '.join(PING_PATHS)}")
    _register_secrets(checked)
    return _send(checked.rstrip("/"), kind, body, timeout, _daemon_timer)


class Pinger:
    """Pings ``<url>/start``, ``<url>`` and ``<url>/fail`` in the background, in order, one at a time.

    The URL is a capability (anyone holding it can report for us), so it is treated as a secret: logs
    name only its host. :meth:`start`, :meth:`success` and :meth:`fail` return at once (True when a ping
    was queued); :meth:`flush` waits a bounded time for the queue at exit. A caller that never flushes
    still gets its last pings out: at interpreter exit they get ``EXIT_PING_WAIT`` seconds."""

    def __init__(self, url: str | None, timeout: float = PING_TIMEOUT, *, timer: TimerFactory = _daemon_timer) -> None:
        checked = check_url(url)
        self.url = checked.rstrip("/") if checked else None
        self.timeout = timeout
        self._timer = timer
        self._lock = threading.Lock()
        self._queued: deque[tuple[str, str]] = deque()
        self._busy = False
        self._flushed = False
        self._at_exit = False
        self._wakers: list[Alarm] = []
        if checked:
            _register_secrets(checked)

    def start(self, body: str = "") -> bool:
        return self._queue("start", body)

    def success(self, body: str) -> bool:
        return self._queue("success", body)

    def fail(self, body: str) -> bool:
        return self._queue("fail", body)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight."""
        return not self._busy

    def _queue(self, kind: str, body: str) -> bool:
        if not self.url:
            return False
        with self._lock:
            if len(self._queued) >= MAX_QUEUED_PINGS:
                dropped, _ = self._queued.popleft()
                log.warning("health ping %r to %s dropped: %d later pings are waiting behind a slow endpoint",
                            dropped, where(self.url), len(self._queued))
            self._queued.append((kind, body))
            self._flushed = False
            if not self._at_exit:
                self._at_exit = True
                atexit.register(self._flush_at_exit)
            if not self._busy:
                self._busy = True
                threading.Thread(target=self._drain, name="pgbkp-ping", daemon=True).start()
        return True

    def _drain(self) -> None:
        assert self.url is not None
        while True:
            with self._lock:
                if not self._queued:
                    self._busy = False
                    wakers = list(self._wakers)
                    break
                kind, body = self._queued.popleft()
            try:
                _send(self.url, kind, body, self.timeout, self._timer)
            except Exception as exc:  # this thread must go on to the next ping whatever happens
                log.warning("health ping %r to %s failed: %s (the backup itself is not affected)", kind,
                            where(self.url), redact(f"{type(exc).__name__}: {exc}"))
        for alarm in wakers:
            alarm.poke()

    def _flush_at_exit(self) -> None:
        if not self._flushed:
            self.flush(EXIT_PING_WAIT)

    def flush(self, timeout: float, alarm: Alarm | None = None) -> bool:
        """Wait until every queued ping is sent or dropped: at most ``timeout`` seconds, and not at all once
        ``alarm`` is set (a second stop request). Returns whether the queue is empty."""
        alarm = alarm or Alarm()
        with self._lock:
            self._flushed = True
            if not self._busy:
                return True
            self._wakers.append(alarm)
        end = time.monotonic() + timeout
        try:
            while self._busy and not alarm.is_set() and (left := end - time.monotonic()) > 0:
                alarm.wait(left)
        finally:
            with self._lock:
                self._wakers.remove(alarm)
                left_over = len(self._queued) + (1 if self._busy else 0)
        if left_over and self.url:
            log.warning("exiting with %d health ping(s) to %s not sent or not answered (the backup itself is not "
                        "affected)", left_over, where(self.url))
        return not left_over


def check_url(url: str | None) -> str | None:
    """HEALTHCHECK_URL must be http(s); checked at start so that a typo is not discovered at 3 a.m."""
    url = (url or "").strip()
    if not url:
        return None
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ConfigError("HEALTHCHECK_URL: contains a space or a control character. Fix: percent-encode it "
                          "(%20 for a space), or copy the URL again from the check's page.")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("HEALTHCHECK_URL: not an http(s) URL. Fix: e.g. https://hc-ping.com/<your-uuid>.")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise ConfigError("HEALTHCHECK_URL: the port is not a number from 0 to 65535. Fix: e.g. "
                          "https://hc-ping.com/<your-uuid>.") from None
    return url


# --------------------------------------------------------------------------------------------------
# The status file


class StatusFileError(ValueError):
    """The status file is not one that pgbkp serve wrote: not a regular file, not JSON, or a field is off."""


_FIX_READ = "Fix: restart pgbkp serve, which rewrites it, and make sure nothing else writes that file."


@dataclass
class LastRun:
    started_at: str
    finished_at: str
    status: str  # ok | failed
    summary: str


@dataclass
class Status:
    """What ``pgbkp serve`` knows about itself; times are ISO 8601 with their UTC offset."""

    started_at: str
    schedule: str | None  # None when CRON_ENABLED=false: one run, no period
    timezone: str
    running_since: str | None = None
    last_run: LastRun | None = None
    last_success_at: str | None = None
    next_run_at: str | None = None

    @classmethod
    def from_dict(cls, doc: object) -> Status:
        """Check every field's type and form, so that :func:`evaluate` cannot trip over one."""
        if not isinstance(doc, Mapping):
            raise StatusFileError(f"the top level is {_json_kind(doc)}, not an object. {_FIX_READ}")
        zone = _field(doc, "timezone", str)
        try:
            tz = ZoneInfo(zone)
        except Exception:  # ValueError, ZoneInfoNotFoundError (a KeyError), or an OS error on odd keys
            raise StatusFileError(f"field 'timezone': {_show(zone)} is not a time zone. {_FIX_READ}") from None
        expression = _field(doc, "schedule", str, optional=True)
        if expression is not None:
            try:
                schedule.parse(expression, tz)
            except ConfigError:
                raise StatusFileError(f"field 'schedule': {_show(expression)} is not a cron expression this "
                                      f"version understands. {_FIX_READ}") from None
        last = doc.get("last_run")
        last_run = None
        if last is not None:
            if not isinstance(last, Mapping):
                raise StatusFileError(f"field 'last_run' is {_json_kind(last)}, not an object. {_FIX_READ}")
            status = _field(last, "status", str, prefix="last_run.")
            if status not in ("ok", "failed"):
                raise StatusFileError(f"field 'last_run.status': {_show(status)} is not ok or failed. {_FIX_READ}")
            last_run = LastRun(_time(last, "started_at", "last_run."), _time(last, "finished_at", "last_run."),
                               status, _field(last, "summary", str, prefix="last_run."))
        return cls(started_at=_time(doc, "started_at"), schedule=expression, timezone=zone,
                   running_since=_time(doc, "running_since", optional=True), last_run=last_run,
                   last_success_at=_time(doc, "last_success_at", optional=True),
                   next_run_at=_time(doc, "next_run_at", optional=True))


def _json_kind(value: object) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "true or false", int: "a number",
             float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(doc: Mapping[str, Any], name: str, kind: type, *, optional: bool = False, prefix: str = "") -> Any:
    if name not in doc:
        raise StatusFileError(f"field '{prefix}{name}' is missing. {_FIX_READ}")
    value = doc[name]
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        want = "a string" + (" or null" if optional else "")
        raise StatusFileError(f"field '{prefix}{name}' is {_json_kind(value)}, not {want}. {_FIX_READ}")
    return value


def _time(doc: Mapping[str, Any], name: str, prefix: str = "", *, optional: bool = False) -> Any:
    """An ISO 8601 time with its UTC offset: a time without one cannot be compared with now."""
    if optional and doc.get(name) is None:
        return None
    text = _field(doc, name, str, optional=optional, prefix=prefix)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise StatusFileError(f"field '{prefix}{name}': {_show(text)} is not an ISO 8601 time. {_FIX_READ}") from None
    if parsed.utcoffset() is None:
        raise StatusFileError(f"field '{prefix}{name}': {_show(text)} has no UTC offset. {_FIX_READ}")
    return text


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_path(path: str | os.PathLike[str]) -> Path:
    """Where the status file really goes: HEALTH_FILE, through any symlinks, when that is a regular file or
    nothing yet. Anything else (a device, a FIFO, a directory) is refused: each write replaces the file
    with a new one, and replacing /dev/null is not what anybody meant."""
    given = os.fspath(path)
    target = Path(os.path.realpath(given))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise ConfigError(f"HEALTH_FILE: cannot use {given!r} ({exc.strerror}). Fix: point HEALTH_FILE at a "
                          f"writable path, e.g. {default_file()}.") from None
    if not stat.S_ISREG(mode):
        shown = given if target == Path(given) else f"{given} (-> {target})"
        raise ConfigError(f"HEALTH_FILE: {shown!r} is {_kind(mode)}, not a regular file, and each status write "
                          f"replaces it. Fix: point HEALTH_FILE at a new path or a regular file, e.g. "
                          f"{default_file()}.")
    return target


def write(path: str | os.PathLike[str], status: Status) -> None:
    """Replace the file atomically (a new file renamed over it), so that a health check never reads half
    of it. Raises :class:`ConfigError` for a path that is not a regular file, OSError when writing fails."""
    target = check_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pgbkp-health-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(status), f, indent=2, ensure_ascii=False)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: str | os.PathLike[str]) -> Status:
    """The status in the file. FileNotFoundError when there is none; :class:`StatusFileError` (one line,
    with the fix) for anything else that is wrong with it. A FIFO or a device is refused unread: opening
    a FIFO would wait for a writer, reading /dev/zero would never end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise StatusFileError(f"it is {_kind(mode)}, not a regular file. Fix: point HEALTH_FILE (or --file) at "
                                  "the file pgbkp serve writes.")
        chunks, size = [], 0
        while size <= MAX_STATUS_BYTES and (chunk := os.read(fd, 1 << 20)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_STATUS_BYTES:
        raise StatusFileError(f"it is larger than {MAX_STATUS_BYTES // (1024 * 1024)} MiB, far more than pgbkp "
                              f"serve writes. {_FIX_READ}")
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise StatusFileError(f"it is not UTF-8 text. {_FIX_READ}") from None
    except json.JSONDecodeError as exc:
        raise StatusFileError(f"it is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}). "
                              f"{_FIX_READ}") from None
    except RecursionError:
        raise StatusFileError(f"its JSON is nested too deeply. {_FIX_READ}") from None
    except ValueError:  # e.g. an integer with more digits than Python converts
        raise StatusFileError(f"it holds a value no JSON reader here accepts (a number thousands of digits "
                              f"long?). {_FIX_READ}") from None
    return Status.from_dict(doc)


def evaluate(status: Status, now: datetime) -> tuple[bool, str]:
    """(healthy, why). Unhealthy when the last run failed, or when nothing succeeded within two schedule
    periods of the last success (of the runner's start, before any success)."""
    tz = ZoneInfo(status.timezone)
    if status.last_run and status.last_run.status != "ok":
        first_line = (status.last_run.summary.strip().splitlines() or ["no summary"])[0]
        return False, f"the last run, started {status.last_run.started_at}, failed: {first_line}"
    if status.schedule is None:
        if status.last_run:
            return True, f"the run started {status.last_run.started_at} succeeded"
        return True, f"the run started {status.running_since or status.started_at} is in progress"
    since = datetime.fromisoformat(status.last_success_at or status.started_at)
    period = schedule.parse(status.schedule, tz).period_after(since)
    deadline = since + 2 * period
    what = f"last success {status.last_success_at}" if status.last_success_at else \
        f"no success since the runner started at {status.started_at}"
    if now > deadline:
        return False, (f"{what}, more than two schedule periods ({_span(period)} each, "
                       f"CRON_SCHEDULE={status.schedule!r}) ago")
    running = f"; a run is in progress since {status.running_since}" if status.running_since else ""
    nxt = f"; next run {status.next_run_at}" if status.next_run_at else ""
    return True, f"{what}{running}{nxt}"


def printable(text: str) -> str:
    """One line as a terminal should show it: control characters (escape sequences, newlines) and lone
    surrogates, which a status file's strings or a path may hold, written as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}min" if seconds % 60 == 0 else f"{seconds}s"


def file_for(env: Mapping[str, str], *, check: bool = False) -> str:
    """HEALTH_FILE, else the per-user default; ``check``: refuse what a write would replace wrongly."""
    path = env.get("HEALTH_FILE", "").strip() or default_file()
    if check:
        check_path(path)
    return path


def cmd_health(config: Any, args: Any) -> int:
    """``pgbkp health``, Docker's HEALTHCHECK every 30 s: here, not in the runner, so it loads no boto3,
    archive or handler. Needs no valid configuration: a health check must answer 0 or 1, never 2 (Docker
    reserves it), so whatever the file holds, the answer is one line and 0 or 1."""
    env = config.env if config else os.environ
    path = args.file or file_for(env)

    def say(line: str) -> None:
        print(printable(line))  # the file's text and the path may hold anything

    try:
        status = read(path)
    except FileNotFoundError:
        say(f"unhealthy: no status file {path}: pgbkp serve has not started (or HEALTH_FILE differs)")
        return EXIT_FAILED
    except StatusFileError as exc:
        say(f"unhealthy: cannot read the status file {path}: {exc}")
        return EXIT_FAILED
    except (OSError, ValueError) as exc:  # ValueError: a path with a NUL byte
        say(f"unhealthy: cannot read the status file {path}: {getattr(exc, 'strerror', None) or exc}. Fix: check "
            "HEALTH_FILE (or --file) and that this user may read it.")
        return EXIT_FAILED
    try:
        ok, why = evaluate(status, datetime.now(UTC))
    except Exception as exc:  # read() checked every field; this is the last guard of the 0-or-1 promise
        say(f"unhealthy: cannot evaluate the status file {path}: {redact(f'{type(exc).__name__}: {exc}')}")
        return EXIT_FAILED
    say(f"{'healthy' if ok else 'unhealthy'}: {why}")
    return EXIT_OK if ok else EXIT_FAILED

