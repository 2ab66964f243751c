"""Logging for the CLI and the local runner: text on a terminal, JSON lines elsewhere, secrets scrubbed.

The Lambda edge uses Powertools' Logger instead; both install :class:`RedactingFilter`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pgbkp.redact import redact

_CONTEXT_KEYS = ("connection", "database")


class RedactingFilter(logging.Filter):
    """Render the message once, scrub every registered secret from it, and keep the result."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = redact(record.getMessage())
        except Exception:  # a log call must never raise, least of all on an error path
            # The arguments are left out: they, not the format, are where a secret would be.
            message = redact(f"{record.msg} [the log arguments did not fit this message]")
        record.msg, record.args = message, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        ctx = "/".join(str(getattr(record, k)) for k in _CONTEXT_KEYS if getattr(record, k, None))
        line = f"{when} {record.levelname:<7} {'[' + ctx + '] ' if ctx else ''}{record.getMessage()}"
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k in _CONTEXT_KEYS:
            if getattr(record, k, None):
                doc[k] = getattr(record, k)
        if record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False)


def make_handler(stream: TextIO, fmt: str | None = None) -> logging.Handler:
    fmt = fmt or ("text" if stream.isatty() else "json")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    handler.addFilter(RedactingFilter())
    return handler


def setup(level: str = "INFO", fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Configure the ``pgbkp`` logger tree once (idempotent: replaces our previous handlers)."""
    root = logging.getLogger("pgbkp")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(make_handler(stream or sys.stderr, fmt))
    root.setLevel(level)
    root.propagate = False


# --------------------------------------------------------------------------------------------------
# The local runner's log file

DEFAULT_LOG_FILE = "/var/log/pg-backup.log"
#: Values of LOG_FILE that mean "no log file".
NO_FILE = ("", "-", "off", "none", "false")
MAX_BYTES = 10 * 1024 * 1024
BACKUP_COUNT = 5


def log_file_path(value: str | None) -> Path | None:
    """Where ``pgbkp serve`` writes its file: LOG_FILE, else the original's /var/log/pg-backup.log when
    that folder is writable (as in the container, with its ./logs volume), else nowhere."""
    if value is not None:
        return None if value.strip().lower() in NO_FILE else Path(value.strip())
    default = Path(DEFAULT_LOG_FILE)
    writable = os.access(default, os.W_OK) if default.exists() else os.access(default.parent, os.W_OK)
    return default if writable else None


class LogFileHandler(logging.handlers.RotatingFileHandler):
    """The rotating log file, which warns once when it cannot be written (a full disk) and goes on.

    logging's own handleError prints a traceback for every line it fails to write: dozens in one run,
    burying the run's own messages. Here the first failure logs one warning, which reaches the console
    (the file cannot take it), and later ones are silent. Every line is still tried, so the file picks up
    again once there is room."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8")
        self.warned = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)  # a bug in a record (bad arguments), not the file: keep logging's report
            return
        if self.warned:
            return
        self.warned = True  # first: the warning below comes back here, and must not warn again
        logging.getLogger("pgbkp.logs").warning(
            "write log file %s: %s. The run goes on; lines reach the console only, until the file can be "
            "written again. Fix: free space on that disk, or set LOG_FILE=off.", self.baseFilename,
            exc.strerror or exc)

    def close(self) -> None:
        """Close even when the last buffered lines cannot be written (that was warned about already)."""
        with contextlib.suppress(OSError):
            super().close()


def add_file(path: str | os.PathLike[str], fmt: str | None = None) -> logging.Handler:
    """Add a rotating file (10 MB x 5) to the ``pgbkp`` logger, JSON unless LOG_FORMAT=text.

    It gets plain lines only: progress bars go to the terminal, never here."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = LogFileHandler(path)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    handler.addFilter(RedactingFilter())
    logging.getLogger("pgbkp").addHandler(handler)
    return handler
