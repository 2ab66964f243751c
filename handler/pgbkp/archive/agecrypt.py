"""age public-key encryption of the archive stream: the object is the ZIP stream encrypted as one age file.

The crypto is rage's, through ``pyrage``; this module holds none (docs/age.md). pyrage streams only as a
pump: ``encrypt_io(reader, writer, ...)`` and ``decrypt_io`` pull from one file-like object and push into
another until the input ends, in a single call. The pipeline pushes instead (ZipStreamWriter writes into
its sink) and the restore pulls (MemberReader reads from its source), so :class:`AgeWriter` and
:class:`AgeReader` run that one call on a worker thread and trade data with the caller in lockstep
(:class:`_Pump`): the caller hands over one buffer and waits until the worker has used all of it. So the
two threads never run at once, the sink and the source are only ever called from the caller's thread,
memory is one buffer and the ciphertext or plaintext it makes (plus age's 64 KiB chunk), and nothing
touches the disk.

age authenticates each 64 KiB chunk before rage releases it, and marks the last one, so the reader only
ever returns authenticated plaintext; damage or truncation raises at the chunk where it is, after the
chunks before it (all authenticated) have been returned. The caller must still treat the stream as
proven only when read() has returned ``b""`` (restore commits only then).

Recipients and identities are parsed here too, so that a bad one is named (position, short prefix of a
public key, never a secret) before any work starts.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pyrage

from pgbkp.archive.errors import ArchiveError, CorruptArchiveError, WrongPasswordError

__all__ = [
    "CHUNK_SIZE",
    "PYRAGE_RANGE",
    "AgeChunkError",
    "AgeCorruptError",
    "AgeError",
    "AgeHeaderError",
    "AgeKeyError",
    "AgeNoIdentityError",
    "AgeReader",
    "AgeTrailingDataError",
    "AgeTruncatedError",
    "AgeWriter",
    "parse_identities",
    "parse_recipients",
    "read_identity_file",
]

#: The pyrage releases whose behaviour (its ``*_io`` pumps, rage's error texts mapped below) the tests pin;
#: pyproject.toml requires exactly this range (a test keeps the two equal).
PYRAGE_RANGE = ">=1.4,<2"
CHUNK_SIZE = 64 * 1024  # age's payload chunk of plaintext (each is followed by a 16-byte Poly1305 tag)
MAGIC = b"age-encryption.org/v1\n"
ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
#: rage buffers the whole header before it can parse it, and sets no limit: a hostile object of one endless
#: header line would fill the memory. A real header is ~100 bytes per recipient (1000 recipients: 98 KB).
MAX_HEADER_BYTES = 16 << 20

#: pyrage recipient and identity objects (x25519 or ssh); pyrage ships no type information.
Recipient = Any
Identity = Any


class SupportsWrite(Protocol):
    def write(self, data: bytes, /) -> Any: ...


class SupportsRead(Protocol):
    def read(self, size: int, /) -> bytes: ...


# errors


class AgeError(ArchiveError):
    """An age stream could not be written or read."""


class AgeNoIdentityError(AgeError, WrongPasswordError):
    """No identity given opens the file: wrong key, or its recipient stanzas are damaged (age cannot tell)."""


class AgeCorruptError(AgeError, CorruptArchiveError):
    """The age file is damaged, truncated or not an age file."""


class AgeHeaderError(AgeCorruptError):
    """The header is not age's, is truncated, or its MAC does not match."""


class AgeChunkError(AgeCorruptError):
    """A payload chunk fails authentication; ``chunk`` is its index (plaintext from ``chunk * CHUNK_SIZE``)."""

    def __init__(self, message: str, chunk: int) -> None:
        super().__init__(message)
        self.chunk = chunk


class AgeTruncatedError(AgeCorruptError):
    """The stream ends on a chunk boundary without age's final chunk."""


class AgeTrailingDataError(AgeCorruptError):
    """Bytes follow age's final chunk."""


class AgeKeyError(ValueError):
    """A recipient or identity given by the user is unusable; the message names it without its secret."""


# the lockstep pump


class _CancelledError(Exception):
    """Raised into pyrage's pump when the caller gave up, so that the worker thread ends."""


class _Pump:
    """One pyrage ``*_io`` call on a worker thread, fed and drained by the caller's thread in lockstep.

    The worker's reads are served from the buffer the caller passed to :meth:`feed`; its writes are
    collected and returned by that same feed(), which returns once the worker has read all of the buffer
    and asks for more (or has finished). The caller never runs while the worker does, and the reverse.
    """

    def __init__(self, run: Callable[[_PumpInput, _PumpOutput], object], name: str) -> None:
        self._cond = threading.Condition()
        self._input = memoryview(b"")
        self._pos = 0
        self._eof = False
        self._hungry = False  # the worker has used all its input and waits for more
        self._cancelled = False
        self.done = False
        self.error: BaseException | None = None
        self._output: list[bytes] = []
        self.produced = 0  # bytes the worker has written so far
        self._thread = threading.Thread(target=self._main, args=(run,), name=name, daemon=True)
        self._thread.start()

    def _main(self, run: Callable[[_PumpInput, _PumpOutput], object]) -> None:
        try:
            run(_PumpInput(self), _PumpOutput(self))
        except BaseException as exc:  # handed to the caller's thread, which raises it as an AgeError
            self.error = exc
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    # the worker's side (called by pyrage, on the worker thread)

    def read(self, size: int) -> bytes:
        with self._cond:
            while self._pos >= len(self._input) and not self._eof and not self._cancelled:
                self._hungry = True
                self._cond.notify_all()
                self._cond.wait()
            if self._cancelled:
                raise _CancelledError("cancelled")
            end = len(self._input) if size is None or size < 0 else self._pos + size
            chunk = bytes(self._input[self._pos : end])
            self._pos += len(chunk)
            return chunk

    def write(self, data: bytes) -> int:
        with self._cond:
            if self._cancelled:
                raise _CancelledError("cancelled")
            self._output.append(data if isinstance(data, bytes) else bytes(data))
            self.produced += len(data)
        return len(data)

    # the caller's side

    def feed(self, data: memoryview | None) -> list[bytes]:
        """Give the worker ``data`` (None: the input has ended), wait until it has used all of it or has
        finished, and return what it wrote meanwhile. Holds no reference to ``data`` afterwards."""
        with self._cond:
            if data is None:
                self._eof = True
            else:
                self._input, self._pos = data, 0
            self._hungry = False
            self._cond.notify_all()
            while not (self._hungry or self.done):
                self._cond.wait()
            self._input, self._pos = memoryview(b""), 0
            out, self._output = self._output, []
        return out

    def cancel(self) -> None:
        """Make the worker's next read or write fail, so that the pump returns; wait for the thread."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def finish(self) -> None:
        self._thread.join()


class _PumpInput:
    """The reader pyrage pulls from."""

    def __init__(self, pump: _Pump) -> None:
        self.read = pump.read


class _PumpOutput:
    """The writer pyrage pushes into."""

    def __init__(self, pump: _Pump) -> None:
        self.write = pump.write


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


# writing


class AgeWriter:
    """A sink that encrypts everything written to it into one age file written to ``sink``.

    write() returns once the data is encrypted; whole chunks reach ``sink`` during write(), the rest at
    close(), which does not close ``sink``. ``sink`` is only called from the thread calling
    write()/close(). abort() (or leaving a ``with`` block) without close() stops the worker: ``sink`` then
    holds an incomplete file that the caller must discard.
    """

    def __init__(self, sink: SupportsWrite, recipients: Sequence[Recipient], *, name: str = "stream") -> None:
        if not recipients:
            raise AgeKeyError(f"encrypt age {name}: no recipients. Fix: give at least one age1… or SSH public key")
        self._sink = sink
        self._name = name
        self.bytes_in = 0
        self.bytes_out = 0
        self._closed = False
        self._aborted = False
        keys = list(recipients)
        self._pump = _Pump(lambda src, dst: pyrage.encrypt_io(src, dst, keys), name="age-encrypt")
        self._finalizer = weakref.finalize(self, self._pump.cancel)
        self._trade(memoryview(b""))  # the worker has written the header (or failed) once this returns

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open("write")
        with _byte_view(data) as view:
            if not view.nbytes:
                return
            self._trade(view)
            self.bytes_in += view.nbytes

    def close(self) -> None:
        """Write age's final chunk; the age file in ``sink`` is then complete (``sink`` stays open)."""
        if self._closed:
            return
        self._check_open("close")
        self._trade(None)
        self._pump.finish()
        self._finalizer.detach()
        self._closed = True

    def abort(self) -> None:
        """Stop the worker; what ``sink`` holds is an incomplete age file (the caller discards it)."""
        if self._closed or self._aborted:
            return
        self._aborted = True
        self._pump.cancel()
        self._finalizer.detach()

    def __enter__(self) -> AgeWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()

    def _check_open(self, operation: str) -> None:
        if self._aborted:
            raise AgeError(f"encrypt age {self._name}: {operation} after abort")
        if self._closed:
            raise AgeError(f"encrypt age {self._name}: {operation} after close")

    def _trade(self, data: memoryview | None) -> None:
        try:
            out = self._pump.feed(data)
            if self._pump.error is not None:
                raise AgeError(f"encrypt age {self._name}: {self._pump.error}") from self._pump.error
            if out:
                block = out[0] if len(out) == 1 else b"".join(out)
                self._sink.write(block)
                self.bytes_out += len(block)
        except BaseException:
            self.abort()
            raise


# reading


class AgeReader:
    """A source that reads one age file from ``source`` and returns its authenticated plaintext.

    The header is checked on construction (a wrong identity or a damaged header fails before anything
    is returned); read() returns only chunks that age has authenticated, and ends (``b""``) only after
    the final chunk with nothing after it. Damage raises an :class:`AgeCorruptError` where it is.
    ``source`` is read ``read_size`` bytes at a time, only from the thread calling read().
    """

    def __init__(
        self,
        source: SupportsRead,
        identities: Sequence[Identity],
        *,
        name: str = "stream",
        read_size: int = 1 << 20,
    ) -> None:
        if not identities:
            raise AgeKeyError(f"decrypt age {name}: no identities. Fix: give the identity file of a recipient")
        if read_size < 1:
            raise ValueError(f"decrypt age {name}: read_size must be positive, got {read_size}")
        self._source = source
        self._name = name
        self._read_size = read_size
        self._buffer = bytearray()
        self._head = b""  # the first bytes of the object, to tell "not an age file" from a damaged header
        self._source_done = False
        self._failed: AgeError | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        keys = list(identities)
        self._pump = _Pump(lambda src, dst: pyrage.decrypt_io(src, dst, keys), name="age-decrypt")
        self._finalizer = weakref.finalize(self, self._pump.cancel)
        try:
            while not self._buffer and not self._pump.done:
                self._pump_once()
            if not self._buffer:
                self._raise_if_failed()
        except BaseException:
            self.abort()
            raise

    def read(self, size: int = -1, /) -> bytes:
        try:
            while (size < 0 or not self._buffer) and not self._pump.done:
                self._pump_once()
            if not self._buffer:
                self._raise_if_failed()
                return b""
        except BaseException:
            self.abort()
            raise
        if size < 0 or size >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
        self.bytes_out += len(data)
        return data

    def abort(self) -> None:
        """Stop the worker and drop what is buffered (the caller gives up on the stream)."""
        self._buffer.clear()
        self._pump.cancel()
        self._finalizer.detach()

    def __enter__(self) -> AgeReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()

    def _pump_once(self) -> None:
        if self._source_done:
            out = self._pump.feed(None)
        else:
            data = self._source.read(self._read_size)
            if data:
                self.bytes_in += len(data)
                if len(self._head) < len(MAGIC):
                    self._head += data[: len(MAGIC) - len(self._head)]
                out = self._pump.feed(_byte_view(data))
            else:
                self._source_done = True
                out = self._pump.feed(None)
        for piece in out:
            self._buffer += piece
        # Nothing out yet, long past any header and the first chunk: refuse before rage buffers more of it.
        if not self._pump.produced and not self._pump.done and self.bytes_in > MAX_HEADER_BYTES + 2 * CHUNK_SIZE:
            self._failed = AgeHeaderError(
                f"decrypt age {self._name}: no age header ends within the first {MAX_HEADER_BYTES >> 20} MiB "
                "(a real one is about 100 bytes per recipient): not an age file, or a hostile one")
            raise self._failed
        if self._pump.done:
            self._pump.finish()  # the thread has returned from pyrage; let it end before we report the outcome

    def _raise_if_failed(self) -> None:
        if self._pump.error is None:
            return
        if self._failed is None:
            self._failed = self._classify(self._pump.error)
        raise self._failed

    def _classify(self, exc: BaseException) -> AgeError:
        """rage's error, as one of ours; the texts are rage's (pinned by tests/test_agecrypt.py)."""
        where = f"decrypt age {self._name}"
        text = str(exc)
        if isinstance(exc, pyrage.DecryptError):  # raised while reading the header
            if not (MAGIC.startswith(self._head) or ARMOR.startswith(self._head)):
                shown = "a ZIP" if self._head.startswith(b"PK") else "no age header"
                return AgeHeaderError(f"{where}: not an age file ({shown}): it does not start with {MAGIC[:-1]!r}")
            if text == "No matching keys found":
                return AgeNoIdentityError(
                    f"{where}: no identity matches: the file was encrypted to other recipients (or its "
                    "recipient lines are damaged). Fix: give the identity of one of the recipients it was made for"
                )
            if text in ("failed to fill whole buffer", "Incomplete header"):
                return AgeHeaderError(f"{where}: the age header is truncated ({self.bytes_in} bytes in all)")
            return AgeHeaderError(f"{where}: the age header is damaged ({text})")
        produced = self._pump.produced
        if text == "decryption error":
            chunk = produced // CHUNK_SIZE
            return AgeChunkError(
                f"{where}: payload chunk {chunk} (plaintext from byte {chunk * CHUNK_SIZE}) fails authentication: "
                "the object is damaged or truncated",
                chunk,
            )
        if text == "age file is truncated":
            return AgeTruncatedError(
                f"{where}: the object ends after {produced} bytes of plaintext without age's final chunk: truncated"
            )
        if text == "last chunk has been processed":
            return AgeTrailingDataError(
                f"{where}: bytes follow age's final chunk (after {produced} bytes of plaintext)"
            )
        if text.startswith("invalid armor"):  # rage's ArmoredReader, reading an armored (PEM) age file
            detail = text.removeprefix("invalid armor").strip()
            return AgeCorruptError(f"{where}: the armored age file is damaged" + (f" {detail}" if detail else ""))
        return AgeError(f"{where}: {type(exc).__name__}: {text}")


# recipients and identities

_SSH_RECIPIENT_TYPES = ("ssh-ed25519", "ssh-rsa")
#: SSH public key types, named in messages (anything else that starts like one is shown by length only: an
#: ``sk-…`` or ``ssh-…`` token pasted by mistake may be an API secret).
_SSH_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})
#: Where a private key given by mistake starts: it is split off its neighbours and never shown.
_PRIVATE_MARKS = ("AGE-SECRET-KEY-", "AGE-PLUGIN-", "-----BEGIN", "-----END")
_SPLIT = re.compile(r"\s*,\s*(?=age1|ssh-|ecdsa-|sk-|age-secret-key-|age-plugin-|-----begin)", re.IGNORECASE)
#: The part of an ``age1…`` recipient before its last ``1`` that names a plugin or post-quantum type.
_HRP = re.compile(r"age1[a-z0-9]{0,24}")


def _split_recipients(text: str) -> list[str]:
    items: list[str] = []
    for line in text.removeprefix("\ufeff").splitlines():
        line = line.strip(" \t,")  # a comma may end a line too: "age1…,\nage1…"
        if line and not line.startswith("#"):
            items += [item.strip() for item in _SPLIT.split(line) if item.strip()]
    return items


def _is_private(item: str) -> bool:
    upper = item.upper()
    return any(mark in upper for mark in _PRIVATE_MARKS)


def _recipient_label(item: str) -> str:
    """A short prefix that identifies a public key; nothing of anything that is not a known public key."""
    if _is_private(item):
        return f"{len(item)} characters"
    if item[:4].lower() == "age1" and item[:12].isascii() and item[:12].isprintable():
        return item[:12] + "…"
    kind, _, rest = item.partition(" ")
    if kind in _SSH_KEY_TYPES and rest[:8].isascii() and rest[:8].isprintable():
        return f"{kind} {rest[:8]}…"
    return f"{len(item)} characters"


def parse_recipients(text: str, *, source: str = "AGE_RECIPIENTS") -> list[Recipient]:
    """The recipients in ``text``: one per line or comma-separated, ``#`` comments and blank lines skipped.

    X25519 (``age1…``) and SSH (``ssh-ed25519 …``, ``ssh-rsa …``) public keys, as age accepts them. A bad
    one raises :class:`AgeKeyError` naming ``source``, its position and a short prefix of it, with the fix.
    """
    items = _split_recipients(text)
    if not items:
        raise AgeKeyError(f"{source}: no recipient. Fix: give one or more age1… or ssh-ed25519/ssh-rsa public keys")
    recipients = []
    for position, item in enumerate(items, start=1):
        recipients.append(_parse_recipient(item, f"{source}: recipient {position} ({_recipient_label(item)})"))
    return recipients


def _parse_recipient(item: str, what: str) -> Recipient:
    """One recipient. Messages hold ``what`` and fixed text only: never the item, which may be a secret."""
    fix = "Fix: give an age1… public key (age-keygen -y key.txt prints it) or an ssh-ed25519/ssh-rsa public key"
    if _is_private(item):
        raise AgeKeyError(
            f"{what}: this is a private key, not a recipient: it must never be where backups are made. "
            "Fix: give its public key instead (age-keygen -y key.txt, or the .pub file of an SSH key)"
        )
    if item[:4].lower() == "age1":
        if any(c.isspace() for c in item):
            raise AgeKeyError(f"{what}: holds a space: give one recipient per line or separate them with commas. "
                              f"{fix}")
        hrp = item.lower().rpartition("1")[0]
        if hrp != "age":
            if not _HRP.fullmatch(hrp):
                raise AgeKeyError(f"{what}: not a valid age1… public key (bad encoding or checksum). {fix}")
            raise AgeKeyError(f"{what}: {hrp} recipients (plugins, post-quantum) are not supported. {fix}")
        try:
            return pyrage.x25519.Recipient.from_str(item)
        except pyrage.RecipientError:
            raise AgeKeyError(f"{what}: not a valid age1… public key (bad encoding or checksum). {fix}") from None
    kind = item.partition(" ")[0]
    if kind in _SSH_RECIPIENT_TYPES:
        try:
            return pyrage.ssh.Recipient.from_str(item)
        except pyrage.RecipientError as exc:
            raise AgeKeyError(f"{what}: {_ssh_reason(kind, str(exc))}. {fix}") from None
    if kind in _SSH_KEY_TYPES:
        raise AgeKeyError(f"{what}: age does not encrypt to {kind} keys, only ssh-ed25519 and ssh-rsa. {fix}")
    if kind.startswith(("ssh-", "ecdsa-", "sk-")):
        raise AgeKeyError(f"{what}: not an SSH key type age knows (only ssh-ed25519 and ssh-rsa). {fix}")
    raise AgeKeyError(f"{what}: not an age recipient (it starts neither with age1 nor with ssh-). {fix}")


def _ssh_reason(kind: str, text: str) -> str:
    """Why rage refused an SSH public key; its error text (pinned by tests) names an RSA size it refuses."""
    if "RsaModulusTooSmall" in text:
        return "an RSA key under 2048 bits, which age refuses as too weak"
    if "RsaModulusTooLarge" in text:
        return "an RSA key over 4096 bits, which rage (the age library pgbkp uses) cannot encrypt to"
    return f"not a valid {kind} public key as age reads it"


_SSH_PRIVATE = (b"-----BEGIN OPENSSH PRIVATE KEY-----", b"-----BEGIN RSA PRIVATE KEY-----")


def parse_identities(data: bytes, *, source: str, passphrase: str | None = None) -> list[Identity]:
    """The identities in an identity file's content, for :class:`AgeReader`.

    An age identity file (``AGE-SECRET-KEY-1…`` lines, ``#`` comments), an unencrypted SSH private key
    (ed25519 or RSA), or either of those encrypted with a passphrase by ``age -p`` (then ``passphrase`` is
    required). Errors name ``source`` and a line number, never the file's content.
    """
    if data.lstrip().startswith((MAGIC, ARMOR)):
        if passphrase is None:
            raise AgeKeyError(
                f"{source}: the identity file is passphrase-protected (age -p) and no passphrase was given. "
                "Fix: give the passphrase it was encrypted with"
            )
        try:
            data = pyrage.passphrase.decrypt(data, passphrase)
        except pyrage.DecryptError:
            raise AgeKeyError(
                f"{source}: the passphrase does not open this identity file (or it was not made by age -p, or it is "
                "damaged). Fix: give the passphrase it was encrypted with"
            ) from None
        if data.lstrip().startswith((MAGIC, ARMOR)):
            raise AgeKeyError(f"{source}: the identity file is encrypted twice. Fix: encrypt it once, with age -p")
    if data.lstrip().startswith(_SSH_PRIVATE):
        return [_parse_ssh_identity(data, source)]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AgeKeyError(
            f"{source}: not an identity file (not UTF-8 text). Fix: give an age-keygen key file"
        ) from None
    identities = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}, line {number}"
        if line.startswith(("AGE-PLUGIN-", "AGE-SECRET-KEY-PQ-")):
            kind = "plugin" if line.startswith("AGE-PLUGIN-") else "post-quantum"
            raise AgeKeyError(f"{where}: {kind} identities are not supported. Fix: use an age-keygen (X25519) key")
        if not line.upper().startswith("AGE-SECRET-KEY-1"):
            raise AgeKeyError(
                f"{where}: not an age identity (AGE-SECRET-KEY-1…). Fix: give the file age-keygen wrote, "
                "or an unencrypted SSH private key"
            )
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise AgeKeyError(f"{where}: not a valid age secret key (bad encoding or checksum)") from None
    if not identities:
        raise AgeKeyError(f"{source}: holds no identity. Fix: give the file age-keygen wrote (AGE-SECRET-KEY-1…)")
    return identities


def _parse_ssh_identity(data: bytes, source: str) -> Identity:
    try:
        return pyrage.ssh.Identity.from_buffer(data)
    except pyrage.IdentityError as exc:
        if "decrypted first" in str(exc):
            raise AgeKeyError(
                f"{source}: the SSH key is passphrase-protected, which pgbkp cannot open. Fix: use an age identity "
                "file protected with age -p, or a copy of the key without its passphrase (ssh-keygen -p)"
            ) from None
        raise AgeKeyError(
            f"{source}: not an SSH private key age can use (ssh-ed25519 or ssh-rsa). Fix: give the private key of "
            "the ssh-ed25519/ssh-rsa public key the backups were encrypted to"
        ) from None


#: An identity file is a few keys: even an RSA-16384 private key encrypted with age -p is under 20 KiB.
MAX_IDENTITY_BYTES = 1 << 20


def read_identity_file(path: str | Path, *, passphrase: str | None = None) -> list[Identity]:
    """:func:`parse_identities` of a file, with a clear error when it cannot be read. A pipe is read, so
    that ``AGE_IDENTITY_FILE=<(pass show age-key)`` keeps the key off the disk, but a named FIFO is opened
    without waiting for a writer (with none, it reads as empty); a device or a directory is refused unread
    (/dev/zero never ends), and so is anything over :data:`MAX_IDENTITY_BYTES`, which is no identity file."""
    try:
        data = _read_small_file(path, MAX_IDENTITY_BYTES)
    except OSError as exc:
        raise AgeKeyError(f"read identity file {path}: {exc.strerror or exc}. Fix: give a readable file") from None
    if data is None:
        raise AgeKeyError(f"read identity file {path}: larger than {MAX_IDENTITY_BYTES // 1024} KiB, which no "
                          "identity file is. Fix: give the file age-keygen wrote, or an SSH private key")
    return parse_identities(data, source=f"identity file {path}", passphrase=passphrase)


def _read_small_file(path: str | Path, limit: int) -> bytes | None:
    """The content of a regular file or a pipe, None when it is over ``limit`` bytes; OSError (with
    ``strerror``) for anything else, without waiting on a FIFO that has no writer or reading a device."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            kind = "a directory" if stat.S_ISDIR(mode) else "a device or socket"
            raise OSError(0, f"it is {kind}, not a regular file")
        os.set_blocking(fd, True)  # opened: a pipe's reads now wait for its writer, or end when it has none
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return None if size > limit else b"".join(chunks)
