"""One message per run, through apprise, to where people already look (Slack, Telegram, e-mail, webhooks).

``NOTIFY_URLS`` holds apprise URLs; a PG_URLS item's ``notify=`` replaces it for that connection
(``notify=off``: none). ``NOTIFY_ON`` says which runs send: ``failure`` (the default), ``always``, ``never``.
:func:`plan` checks every URL before any work starts; :meth:`Notifier.send` sends at the end of the run,
from ``handler_core.handle``, the one path ``pgbkp backup``, ``pgbkp serve`` and Lambda share. Each target
gets one message per run, covering the connections that use it.

Why it is built this way:

* apprise is imported only when some URL is set: it and its ~190 plugins cost a few hundred
  milliseconds, which neither ``pgbkp --version`` nor a Lambda cold start should pay for nothing
  (docs/benchmarks.md, "Start-up").
* A notification never delays or fails a backup: each URL is sent from a daemon thread of its own (one
  that hangs holds up no other), and the run waits for them all at most ``NOTIFY_TIMEOUT_SECONDS``,
  together. What did not go out is logged once, as a warning; the result and the exit code are unchanged.
* The URLs hold tokens and passwords, in any part (a Telegram bot token is the "host"), so a URL is
  named by where it was set, its position and its scheme, never by any other part. apprise's own log
  lines name hosts and whole URLs: they are kept off our logs (see :func:`_apprise`), and only a reason
  we recognise in them ("could not connect", "HTTP 500") is passed on.
* ``json://`` webhooks are for programs: apprise's JSON body is fixed (version, title, message, type,
  attachments; ``:key=value`` in the URL only adds constant strings), so there the ``message`` is itself
  the run's result as JSON text, the document ``pgbkp backup --json`` prints, plus ``title`` and ``text``
  (the message the other targets get). Attachments would arrive base64-encoded: harder to read for
  every receiver.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pgbkp.config import Config, ConfigError, setting
from pgbkp.output import OK_STATUSES, size
from pgbkp.redact import Secret, register

log = logging.getLogger(__name__)

#: ``notify=`` values that switch a connection's notifications off.
OFF = ("off", "none")
#: Schemes whose receivers get the result as JSON (the ``message`` field), not as text.
JSON_SCHEMES = ("json", "jsons")
#: What a scheme may look like to be shown in a message; anything else is called "a URL".
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,19}")
#: Pieces of a URL worth scrubbing from any text (see :func:`_register_pieces`).
_PIECES = re.compile(r"[/:@?&=,;#\s]+")
#: How many databases a message lists before it says "and N more" (chat services cap a message's length).
MAX_LISTED = 50
#: The most of one error a text message shows; the log and the JSON document keep it whole.
MAX_ERROR = 600
#: Once the process is asked to stop (SIGTERM), the messages get at most this much more time: a stopped
#: run is news worth a try, but the exit must come well within a container's stop timeout (Docker: 10 s).
STOP_WAIT_SECONDS = 2.0
#: How often the wait looks at the stop request (a signal does not end a wait on an Event).
_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Target:
    """One apprise URL and where it was set; :attr:`label` is how messages name it."""

    url: Secret
    where: str
    position: int
    scheme: str

    @property
    def label(self) -> str:
        return f"{self.where} URL {self.position} ({self.scheme}://)"

    @property
    def json(self) -> bool:
        return self.scheme in JSON_SCHEMES


@dataclass(frozen=True)
class Notifier:
    """Who hears of which connection, and when. Build it with :func:`plan` before the run starts."""

    on: str = "never"
    timeout: float = 10.0
    #: Connection name -> its targets.
    routes: Mapping[str, tuple[Target, ...]] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.on != "never" and any(self.routes.values())

    def send(self, summary: Mapping[str, Any], *, time_left: float | None = None,
             should_stop: Callable[[], bool] = lambda: False) -> dict[str, str]:
        """Send the run's message to each target whose connections are in ``summary``, as NOTIFY_ON asks.

        Waits at most NOTIFY_TIMEOUT_SECONDS (and never past ``time_left``, Lambda's remaining time, nor
        more than STOP_WAIT_SECONDS once ``should_stop`` says the process is asked to stop), and never
        raises: what failed or was late is logged once. Returns each target's label -> ``sent``,
        ``failed`` or ``late`` (for tests and the log line)."""
        try:
            messages = self._messages(summary)
            if not messages:
                return {}
            wait = self.timeout if time_left is None else max(0.0, min(self.timeout, time_left))
            return _deliver(messages, wait, "NOTIFY_TIMEOUT_SECONDS" if wait == self.timeout else "the time left",
                            should_stop)
        except Exception as exc:  # a notification must never fail a backup, not even by a bug here
            log.warning("notifications not sent: %s (the backups themselves are not affected)",
                        type(exc).__name__)
            log.debug("notification failure", exc_info=True)
            return {}

    def _messages(self, summary: Mapping[str, Any]) -> list[tuple[Target, Message]]:
        if not self.active:
            return []
        by_target: dict[Target, list[str]] = {}
        for name in summary.get("connections", []):
            for target in self.routes.get(name, ()):
                by_target.setdefault(target, []).append(name)
        out = []
        for target, names in by_target.items():
            part = _part(summary, set(names))
            if self.on == "always" or not part.get("ok", True):
                out.append((target, message(part)))
        return out


def plan(config: Config) -> Notifier:
    """Check NOTIFY_URLS, NOTIFY_ON and every ``notify=``; raises ConfigError naming the bad URL by its
    position and scheme. Imports apprise only when some URL is set."""
    env = config.env
    on = setting(env, "NOTIFY_ON")
    timeout = float(setting(env, "NOTIFY_TIMEOUT_SECONDS"))
    glob: str | None = setting(env, "NOTIFY_URLS")
    global_targets = targets(glob, "NOTIFY_URLS") if glob else ()
    routes: dict[str, tuple[Target, ...]] = {}
    for conn in config.connections:
        if conn.notify is None:
            routes[conn.name] = global_targets
            continue
        where = f"PG_URLS item {conn.index + 1} ({conn.name}): field 'notify'"
        text = conn.notify.reveal().strip()
        if not text:
            raise ConfigError(f"{where} is empty. Fix: give apprise URLs (notify=slack://...), or notify=off for "
                              "no notifications about this connection.")
        routes[conn.name] = () if text.lower() in OFF else targets(text, where)
    return Notifier(on, timeout, routes)


def config_failed(env: Mapping[str, str], error: str, *, time_left: float | None = None) -> dict[str, str]:
    """A scheduled run that could not start because a setting is wrong is a failed backup too: tell
    NOTIFY_URLS, once, with the error line (built from parts that hold no secret, and scrubbed again).

    Only the global NOTIFY_URLS: a PG_URLS that does not parse has no ``notify=`` to read. Best effort and
    silent: NOTIFY_ON=never, or a NOTIFY_* setting that is itself wrong, sends nothing (that error is the
    one being reported). ``pgbkp backup`` and Lambda call this; ``pgbkp serve`` does not (it fails at its
    start, where a restart loop would send one message per restart)."""
    try:
        on = setting(env, "NOTIFY_ON")
        text: str | None = setting(env, "NOTIFY_URLS")
        if on == "never" or not text:
            return {}
        found = targets(text, "NOTIFY_URLS")
        wait = float(setting(env, "NOTIFY_TIMEOUT_SECONDS"))
    except (ConfigError, ImportError):
        return {}
    try:
        from pgbkp.redact import redact

        shown = redact(error)
        title = "pg-bkp: configuration error, no backup ran"
        body = f"{shown}\n(exit 2: nothing was dumped, written or deleted; fix the setting and run again)"
        document = {"ok": False, "action": "configuration", "title": title, "text": body, "error": shown,
                    "connections": [], "results": []}
        msg = Message(title, body, document, False)
        limit = "NOTIFY_TIMEOUT_SECONDS"
        if time_left is not None and time_left < wait:
            wait, limit = max(0.0, time_left), "the time left"
        return _deliver([(t, msg) for t in found], wait, limit)
    except Exception as exc:  # never turn a configuration error into another failure
        log.warning("notification of the configuration error not sent: %s", type(exc).__name__)
        return {}


def targets(text: str, where: str) -> tuple[Target, ...]:
    """The apprise URLs in ``text`` (commas or spaces between them, as apprise itself splits them),
    each checked by apprise; raises ConfigError naming the first bad one by position and scheme."""
    apprise = _apprise()
    from apprise.utils.parse import parse_urls

    register(text)
    found = []
    urls = parse_urls(text)
    for position, url in enumerate(urls, start=1):
        _register_pieces(url)
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        shown = scheme if _SCHEME.fullmatch(scheme) else ""
        if apprise.Apprise.instantiate(url) is None:
            what = f"{where}: URL {position} of {len(urls)}" + (f" ({shown}://)" if shown else "")
            raise ConfigError(f"{what} is {_why_bad(apprise, shown)} (the URL is not shown: it holds tokens). "
                              "Fix: write it as apprise's documentation for that service says "
                              "(https://github.com/caronc/apprise/wiki), several separated by commas.")
        found.append(Target(Secret(url), where, position, shown))
    if not found:
        raise ConfigError(f"{where}: no URL in it. Fix: e.g. slack://TokenA/TokenB/TokenC or json://host/path, "
                          "or leave it unset.")
    return tuple(found)


def _why_bad(apprise: Any, scheme: str) -> str:
    if not scheme:
        return "not an apprise URL (scheme://...)"
    from apprise.manager_plugins import NotificationManager

    known = sorted(NotificationManager().schemas())  # a singleton: the plugins apprise has loaded
    if scheme not in known:
        import difflib  # only for a mistyped scheme: start-up should not pay for it

        close = difflib.get_close_matches(scheme, known, n=1, cutoff=0.75)
        return "a scheme apprise does not know" + (f" (did you mean {close[0]}://?)" if close else "")
    return "not complete or not valid for that service"


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    #: The result document for JSON receivers.
    document: Mapping[str, Any]
    ok: bool


def _part(summary: Mapping[str, Any], names: set[str]) -> dict[str, Any]:
    """``summary`` restricted to the connections ``names`` (a target may hear of only some of them)."""
    results = [r for r in summary.get("results", []) if r.get("connection") in names]
    ok_status = ("ok",) if summary.get("action") == "verify" else OK_STATUSES
    part: dict[str, Any] = {**summary, "connections": [c for c in summary.get("connections", []) if c in names],
                            "results": results, "ok": all(r.get("status") in ok_status for r in results)}
    if summary.get("action") == "verify" and not results:
        part["ok"] = summary.get("ok", False)
    for key in ("skipped", "handed_off"):
        if key in summary:
            part[key] = [x for x in summary[key] if x.get("connection") in names]
    return part


def message(summary: Mapping[str, Any]) -> Message:
    """The title and text of a run's message, from the result document (README.md, "Result")."""
    verify = summary.get("action") == "verify"
    results = list(summary.get("results", []))
    failed = [r for r in results if r.get("status") != "ok" and (verify or r.get("status") not in OK_STATUSES)]
    names = list(summary.get("connections", []))
    on = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    what = "restore test" if verify else "backup"
    total = len(results)
    if failed:
        title = f"pg-bkp: {len(failed)} of {total} {what}s failed on {on}"
    elif total:
        title = f"pg-bkp: {total} {what}{'s' if total != 1 else ''} ok on {on}"
    else:
        title = f"pg-bkp: no {what} ran on {on}"
    ordered = failed + [r for r in results if r not in failed]
    lines: list[str] = []
    for r in ordered[:MAX_LISTED]:
        lines += _verify_lines(r) if verify else _backup_lines(r)
    if len(ordered) > MAX_LISTED:
        lines.append(f"... and {len(ordered) - MAX_LISTED} more (all in the log and the result)")
    for s in summary.get("skipped", []):
        lines.append(f"{_name(s['connection'])}/{_name(s['database'])}: skipped ({s['reason']})")
    if verify and not results:
        lines += [f"{name}: no backups found to verify" for name in names]
    for h in summary.get("handed_off", []):
        lines.append(f"{h['connection']}: {', '.join(h['databases'])} handed to a new invocation "
                     "(it sends its own message)")
    body = "\n".join(lines) or "nothing to report"
    document = {"title": title, "text": body, **summary}
    return Message(title, body, document, not failed)


def _backup_lines(r: Mapping[str, Any]) -> list[str]:
    status = r.get("status", "failed")
    sizes = f"{size(r.get('raw_bytes') or 0)} dumped, {size(r.get('object_bytes') or 0)} stored"
    seconds = float(r.get("seconds") or 0)
    who = f"{_name(r['connection'])}/{_name(r['database'])}"
    head = (f"{who}: {status} in {seconds:.1f} s ({sizes})" if status == "ok"
            else f"{who}: {status.upper()} after {seconds:.1f} s ({sizes})")
    lines = [head]
    if r.get("key"):  # a failed backup leaves no object behind: its key says where it would have been
        what = "object" if status == "ok" else "object (not written)"
        lines.append(f"  {what}: s3://{r.get('bucket')}/{_name(r['key'])}")
    if r.get("error"):
        lines.append(f"  error: {_error(r['error'])}")
    deleted = (r.get("retention") or {}).get("deleted") or []
    if deleted:
        done = sum(1 for d in deleted if d.get("done"))
        lines.append(f"  retention: deleted {done} older backup{'s' if done != 1 else ''}")
    return lines


def _verify_lines(r: Mapping[str, Any]) -> list[str]:
    status = r.get("status", "failed")
    seconds = float(r.get("seconds") or 0)
    detail = f"{r.get('tables', 0)} tables, {r.get('rows', 0)} rows, {size(r.get('object_bytes') or 0)} stored"
    lines = [f"{_name(r['connection'])}/{_name(r['database'])}: restore test "
             f"{'ok' if status == 'ok' else status.upper()} in {seconds:.1f} s ({detail})"]
    if r.get("key"):
        lines.append(f"  object: s3://{r.get('bucket')}/{_name(r['key'])}")
    if r.get("error"):
        lines.append(f"  error: {_error(r['error'])}")
    return lines


def _name(value: Any) -> str:
    """A name as one line: PostgreSQL allows a newline in a database name, which would start a line of
    its own (``main/x: ok ...``) in the message."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def _error(value: Any) -> str:
    """An error, its lines indented under ``error:`` so that none looks like a database's line, and cut
    to MAX_ERROR characters (a chat message has room for a few)."""
    text = str(value).replace("\r\n", "\n").strip()
    if len(text) > MAX_ERROR:
        text = text[:MAX_ERROR].rstrip() + f"... ({len(text) - MAX_ERROR} more characters in the log)"
    return "\n".join(_name(line) for line in text.split("\n")).replace("\n", "\n    ")


# --------------------------------------------------------------------------------------------------
# Sending


class _Outcome:
    """One target's delivery, shared by its thread and the waiting run under ``lock``."""

    lock = threading.Lock()

    def __init__(self, target: Target) -> None:
        self.target = target
        self.state = "sending"  # sending | sent | failed | late
        self.reason = ""
        self.done = threading.Event()


def _deliver(messages: Sequence[tuple[Target, Message]], wait: float, limit: str,
             should_stop: Callable[[], bool] = lambda: False) -> dict[str, str]:
    """Send each message from a daemon thread; wait for all of them ``wait`` seconds at most, together,
    and STOP_WAIT_SECONDS at most from the moment a stop is asked."""
    apprise = _apprise()
    outcomes = [_Outcome(target) for target, _ in messages]
    for outcome, (target, msg) in zip(outcomes, messages, strict=True):
        threading.Thread(target=_send_one, args=(apprise, target, msg, outcome),
                         name="pgbkp-notify", daemon=True).start()
    end = time.monotonic() + wait
    stopping = False
    for outcome in outcomes:
        while not outcome.done.wait(min(_POLL_SECONDS, max(0.0, end - time.monotonic()))):
            if time.monotonic() >= end:
                break
            if not stopping and should_stop():
                stopping, soon = True, time.monotonic() + STOP_WAIT_SECONDS
                if soon < end:
                    limit, wait, end = "the wait a stop request allows", STOP_WAIT_SECONDS, soon
    report = {}
    for outcome in outcomes:
        with _Outcome.lock:
            if outcome.state == "sending":
                outcome.state = "late"  # the thread, when it ends, says nothing more
            state, reason = outcome.state, outcome.reason
        label = outcome.target.label
        if state == "late":
            log.warning("notification to %s did not go out within %s (%g s): left behind (the backups themselves "
                        "are not affected)", label, limit, wait)
        elif state == "failed":
            log.warning("notification to %s failed: %s (the backups themselves are not affected)", label, reason)
        else:
            log.info("notification sent to %s", label)
        report[label] = state
    return report


def _send_one(apprise: Any, target: Target, msg: Message, outcome: _Outcome) -> None:
    _Capture.begin()
    try:
        # The service's own notify(), in this thread: Apprise.notify() would hand it to a thread pool, where
        # its log lines could no longer be told apart from another target's.
        service = apprise.Apprise.instantiate(target.url.reveal())
        if target.json:
            body = json.dumps(msg.document, ensure_ascii=False, default=str)
        else:
            body = msg.body
            if service is not None and not _sets_overflow(target.url.reveal()):
                # apprise's default passes a long text on as it is, and Discord (2,000 characters) or
                # Telegram (4,096) then refuse the whole message: send what fits, failures first.
                service.overflow_mode = apprise.OverflowMode.TRUNCATE
                title_room = len(msg.title) + 2 if service.title_maxlen <= 0 else 0  # the title joins the body
                body = fit(body, int(service.body_maxlen) - title_room)
        kind = apprise.NotifyType.SUCCESS if msg.ok else apprise.NotifyType.FAILURE
        ok = service is not None and bool(service.notify(body=body, title=msg.title, notify_type=kind,
                                                         body_format=apprise.NotifyFormat.TEXT))
        reason = "" if ok else _reason(_Capture.lines())
    except Exception as exc:
        ok, reason = False, f"{type(exc).__name__} in apprise"
    finally:
        _Capture.end()
    with _Outcome.lock:
        if outcome.state == "sending":
            outcome.state, outcome.reason = ("sent", "") if ok else ("failed", reason)
    outcome.done.set()


def _sets_overflow(url: str) -> bool:
    """Whether the URL chooses apprise's overflow mode itself (``?overflow=split``)."""
    query = urllib.parse.urlsplit(url).query
    return any(k.lower() == "overflow" for k, _ in urllib.parse.parse_qsl(query, keep_blank_values=True))


def fit(body: str, room: int) -> str:
    """``body`` cut at a line's end to ``room`` characters, saying so on a last line; the lines are in
    order of importance (failures first), so what is cut is the least of it."""
    if len(body) <= room:
        return body
    lines = body.split("\n")

    def note(kept: int) -> str:
        return f"... {len(lines) - kept} more lines cut to fit this service's limit (all in the log and the result)"

    kept: list[str] = []
    used = len(note(0)) + 1  # the longest the note can be
    for line in lines:
        if used + len(line) + 1 > room:
            break
        kept.append(line)
        used += len(line) + 1
    if not kept:  # not even the first line fits: apprise cuts it
        return body
    return "\n".join([*kept, note(len(kept))])


_STATUS = re.compile(r"(?:error|status|code)[=: ]+(\d{3})\b", re.IGNORECASE)


def _reason(lines: Sequence[str]) -> str:
    """What went wrong, from apprise's log lines, in words of ours only: they name hosts and URLs."""
    text = "\n".join(lines)
    m = _STATUS.search(text)
    if m:
        return f"the service answered HTTP {m.group(1)}"
    lowered = text.lower()
    if "timeout" in lowered or "timed out" in lowered:
        return "the service did not answer in time"
    if "connection error" in lowered or "socket exception" in lowered or "could not connect" in lowered:
        return "could not connect to the service"
    if "authenticat" in lowered or "login" in lowered:
        return "the service refused the credentials"
    return "the service did not accept it"


class _Capture(logging.Handler):
    """apprise's log records, kept per sending thread instead of printed: they may name a URL's parts."""

    _lines: ClassVar[dict[int, list[str]]] = {}
    _lock = threading.Lock()

    @classmethod
    def begin(cls) -> None:
        with cls._lock:
            cls._lines[threading.get_ident()] = []

    @classmethod
    def lines(cls) -> list[str]:
        with cls._lock:
            return list(cls._lines.get(threading.get_ident(), []))

    @classmethod
    def end(cls) -> list[str]:
        with cls._lock:
            return cls._lines.pop(threading.get_ident(), [])

    def emit(self, record: logging.LogRecord) -> None:
        self.keep(record)

    @classmethod
    def keep(cls, record: logging.LogRecord) -> bool:
        """Keep the record if this is a notification thread; False (not kept) in any other thread."""
        with cls._lock:
            lines = cls._lines.get(threading.get_ident())
        if lines is None:
            return False
        try:
            text = record.getMessage()
        except Exception:
            return True
        with cls._lock:
            if len(lines) < 50:
                lines.append(text)
        return True


class _Mute(logging.Filter):
    """On the loggers of the libraries apprise sends with: a notification thread's records are captured
    (for the reason) instead of logged; other threads' (boto3 uses urllib3 too) pass untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _Capture.keep(record)


#: Loggers of the HTTP and mail stack under apprise. Their lines name the request's path, which holds a
#: Slack or Telegram token (urllib3: ``"POST /bot<token>/sendMessage" 200`` at DEBUG, ``Failed to parse
#: headers (url=...)`` as a WARNING), and Lambda's runtime prints the root logger's records.
_STACK = ("urllib3", "requests", "charset_normalizer", "smtplib")
_setup_lock = threading.Lock()
_mute = _Mute()


def _apprise() -> Any:
    """apprise, imported on first use, with its logger kept to itself (its lines name hosts and URLs), and
    the loggers of the libraries under it muted in notification threads."""
    import apprise

    with _setup_lock:
        logger = logging.getLogger("apprise")
        if not any(isinstance(h, _Capture) for h in logger.handlers):
            logger.addHandler(_Capture(logging.DEBUG))
            logger.propagate = False
        names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in _STACK]
        for name in {*names, *_STACK}:
            stack_logger = logging.getLogger(name)  # a filter on the logger a record starts at stops it whole
            if _mute not in stack_logger.filters:
                stack_logger.addFilter(_mute)
    return apprise


def _register_pieces(url: str) -> None:
    """Give the redactor the URL and its long pieces (tokens, passwords, webhook paths), so that no text
    that reaches a log can carry them, whoever wrote it. Pieces with a dot are left: host and file names,
    which would garble ordinary messages and are not what a token looks like."""
    register(url)
    register(urllib.parse.unquote(url))
    rest = url.split("://", 1)[-1]
    for piece in _PIECES.split(rest):
        if "." not in piece:
            register(piece)
            register(urllib.parse.unquote(piece))
