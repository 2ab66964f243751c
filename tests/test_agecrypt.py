"""The age layer (pgbkp.archive.agecrypt) against the stock ``age`` CLI, both ways, and every rejection.

Files made by ``age`` (Debian package ``age``) are what we decrypt, and ``age -d`` decrypts what we write,
so the format is checked by an independent implementation. The payload spans six 64 KiB chunks, so a
damaged first, middle and last chunk are three different places; a damaged chunk must fail with the
plaintext before it returned exactly and nothing of it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pty
import random
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest

from pgbkp.archive import CorruptArchiveError, WrongPasswordError, ZipStreamWriter, iter_member
from pgbkp.archive import agecrypt as ac
from pgbkp.archive.agecrypt import (
    CHUNK_SIZE,
    AgeChunkError,
    AgeError,
    AgeHeaderError,
    AgeKeyError,
    AgeNoIdentityError,
    AgeReader,
    AgeTrailingDataError,
    AgeTruncatedError,
    AgeWriter,
)

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple 42"
#: Five whole chunks and a short last one: chunk 0 is the first, 2 a middle one, 5 the last.
PAYLOAD = random.Random(15).randbytes(5 * CHUNK_SIZE + 1234)


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (Debian packages age and openssh-client are required; .ci/system-deps.sh)"
    return path


def run(*args: str | Path, stdin: bytes | None = None) -> bytes:
    done = subprocess.run([str(a) for a in args], input=stdin, capture_output=True, check=False)
    assert done.returncode == 0, f"{args[0]} failed: {done.stderr.decode(errors='replace')}"
    return done.stdout


class Key:
    """An identity file and the recipient string (public key) that matches it."""

    def __init__(self, identity: Path, recipient: str) -> None:
        self.identity = identity
        self.recipient = recipient


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    folder = tmp_path_factory.mktemp("age-keys")
    found = {}
    x25519 = folder / "key.txt"
    run(tool("age-keygen"), "-o", x25519)
    found["x25519"] = Key(x25519, run(tool("age-keygen"), "-y", x25519).decode().strip())
    for kind, extra in (("ed25519", []), ("rsa", ["-b", "2048"])):
        path = folder / f"id_{kind}"
        run(tool("ssh-keygen"), "-q", "-t", kind, *extra, "-N", "", "-C", "restore, team", "-f", path)
        found[f"ssh-{kind}"] = Key(path, path.with_suffix(".pub").read_text().strip())
    return found


def encrypt(data: bytes, recipients: list[str], *, write_size: int = 1 << 20) -> bytes:
    sink = io.BytesIO()
    writer = AgeWriter(sink, ac.parse_recipients("\n".join(recipients)))
    for start in range(0, len(data), write_size):
        writer.write(data[start : start + write_size])
    writer.close()
    return sink.getvalue()


class Outcome:
    """What a reader returned before it stopped, and the error it stopped with (None: clean end)."""

    def __init__(self, data: bytes, error: Exception | None) -> None:
        self.data = data
        self.error = error


def decrypt(data: bytes, identities: list[object], *, read_size: int = 1 << 20) -> Outcome:
    got = bytearray()
    try:
        reader = AgeReader(io.BytesIO(data), identities)
        while chunk := reader.read(read_size):
            got += chunk
    except AgeError as exc:
        return Outcome(bytes(got), exc)
    return Outcome(bytes(got), None)


def header_length(data: bytes) -> int:
    """Bytes of the age header, through the ``---`` MAC line (the 16-byte payload nonce follows)."""
    mac_line = data.index(b"\n---") + 1
    return data.index(b"\n", mac_line) + 1


def flip(data: bytes, offset: int) -> bytes:
    damaged = bytearray(data)
    damaged[offset] ^= 0x01
    return bytes(damaged)


@pytest.fixture(scope="module")
def cli_file(keys: dict[str, Key], tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """PAYLOAD encrypted by the age CLI to the X25519 key."""
    folder = tmp_path_factory.mktemp("age-cli")
    (folder / "payload").write_bytes(PAYLOAD)
    run(tool("age"), "-r", keys["x25519"].recipient, "-o", folder / "payload.age", folder / "payload")
    return (folder / "payload.age").read_bytes()


# interoperability with the age CLI


@pytest.mark.parametrize("kind", ["x25519", "ssh-ed25519", "ssh-rsa"])
def test_we_encrypt_and_age_cli_decrypts(kind: str, keys: dict[str, Key], tmp_path: Path) -> None:
    path = tmp_path / "backup.zip.age"
    path.write_bytes(encrypt(PAYLOAD, [keys[kind].recipient], write_size=100_000))
    assert run(tool("age"), "-d", "-i", keys[kind].identity, path) == PAYLOAD


@pytest.mark.parametrize("kind", ["x25519", "ssh-ed25519", "ssh-rsa"])
def test_age_cli_encrypts_and_we_decrypt(kind: str, keys: dict[str, Key], tmp_path: Path) -> None:
    plain, sealed = tmp_path / "payload", tmp_path / "payload.age"
    plain.write_bytes(PAYLOAD)
    flag = "-r" if kind == "x25519" else "-R"
    target = keys[kind].recipient if kind == "x25519" else str(keys[kind].identity) + ".pub"
    run(tool("age"), flag, target, "-o", sealed, plain)
    outcome = decrypt(sealed.read_bytes(), ac.read_identity_file(keys[kind].identity), read_size=50_000)
    assert outcome.error is None
    assert outcome.data == PAYLOAD


def test_several_recipients_each_identity_decrypts(keys: dict[str, Key], tmp_path: Path) -> None:
    recipients = f"# the restore team\n{keys['x25519'].recipient}, {keys['ssh-ed25519'].recipient}\n\n"
    sink = io.BytesIO()
    writer = AgeWriter(sink, ac.parse_recipients(recipients))
    writer.write(PAYLOAD)
    writer.close()
    path = tmp_path / "two.age"
    path.write_bytes(sink.getvalue())
    for kind in ("x25519", "ssh-ed25519"):
        assert run(tool("age"), "-d", "-i", keys[kind].identity, path) == PAYLOAD
    assert decrypt(path.read_bytes(), ac.read_identity_file(keys["ssh-rsa"].identity)).error.__class__ is (
        AgeNoIdentityError
    )


def test_empty_stream_round_trips(keys: dict[str, Key], tmp_path: Path) -> None:
    path = tmp_path / "empty.age"
    path.write_bytes(encrypt(b"", [keys["x25519"].recipient]))
    assert run(tool("age"), "-d", "-i", keys["x25519"].identity, path) == b""
    outcome = decrypt(path.read_bytes(), ac.read_identity_file(keys["x25519"].identity))
    assert (outcome.data, outcome.error) == (b"", None)


def test_zip_inside_age_opens_with_age_then_7z_and_bsdtar(keys: dict[str, Key], tmp_path: Path) -> None:
    """The user's way out: ``age -d -i key.txt backup.zip.age > backup.zip``, then stock ZIP tools; and
    our own reader, MemberReader over AgeReader, gives the same bytes."""
    sealed = io.BytesIO()
    outer = AgeWriter(sealed, ac.parse_recipients(keys["x25519"].recipient), name="db.zip.age")
    with ZipStreamWriter(outer, "db.sql", level=6, threads=2) as writer:
        writer.write(PAYLOAD)
        writer.close()
    outer.close()
    (tmp_path / "db.zip.age").write_bytes(sealed.getvalue())
    (tmp_path / "db.zip").write_bytes(run(tool("age"), "-d", "-i", keys["x25519"].identity, tmp_path / "db.zip.age"))
    run(tool("7z"), "t", tmp_path / "db.zip")
    assert run(tool("bsdtar"), "-x", "-O", "-f", tmp_path / "db.zip") == PAYLOAD
    sealed.seek(0)
    source = AgeReader(sealed, ac.read_identity_file(keys["x25519"].identity), name="db.zip.age")
    assert b"".join(iter_member(source)) == PAYLOAD
    assert source.read(1) == b""


def protect_with_age_p(source: Path, target: Path, passphrase: str) -> None:
    """``age -p -o target source`` on a pseudo-terminal (age reads passphrases from /dev/tty only),
    typing the passphrase at each of its two prompts."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: exec at once
        os.execv(tool("age"), ["age", "-p", "-o", str(target), str(source)])
    seen = b""
    answered = 0
    while True:
        try:
            output = os.read(terminal, 1024)
        except OSError:  # EIO: age has exited and closed the terminal
            break
        if not output:
            break
        seen += output
        if re.search(rb"passphrase[^:\n]*: *$", seen, re.IGNORECASE) and answered < 2:
            os.write(terminal, passphrase.encode() + b"\n")
            answered += 1
            seen = b""
    os.close(terminal)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answered == 2


def test_passphrase_protected_identity_from_age_p(keys: dict[str, Key], cli_file: bytes, tmp_path: Path) -> None:
    protected = tmp_path / "key.txt.age"
    protect_with_age_p(keys["x25519"].identity, protected, PASSPHRASE)
    assert protected.read_bytes().startswith(b"age-encryption.org/v1\n-> scrypt ")

    outcome = decrypt(cli_file, ac.read_identity_file(protected, passphrase=PASSPHRASE))
    assert (outcome.data, outcome.error) == (PAYLOAD, None)

    with pytest.raises(AgeKeyError) as wrong:
        ac.read_identity_file(protected, passphrase="not the passphrase")
    assert str(wrong.value) == (
        f"identity file {protected}: the passphrase does not open this identity file (or it was not made by "
        "age -p, or it is damaged). Fix: give the passphrase it was encrypted with"
    )
    with pytest.raises(AgeKeyError) as missing:
        ac.read_identity_file(protected)
    assert str(missing.value) == (
        f"identity file {protected}: the identity file is passphrase-protected (age -p) and no passphrase was "
        "given. Fix: give the passphrase it was encrypted with"
    )


# rejections: each raises before anything unauthenticated is returned


def test_wrong_identity_fails_on_construction(cli_file: bytes) -> None:
    stranger = ac.parse_identities(run(tool("age-keygen")), source="stranger")
    source = io.BytesIO(cli_file)
    with pytest.raises(AgeNoIdentityError) as caught:
        AgeReader(source, stranger, name="s3://bkt/db.zip.age")
    assert str(caught.value) == (
        "decrypt age s3://bkt/db.zip.age: no identity matches: the file was encrypted to other recipients (or "
        "its recipient lines are damaged). Fix: give the identity of one of the recipients it was made for"
    )
    assert isinstance(caught.value, WrongPasswordError)
    assert source.tell() == len(cli_file)  # the 1 MiB read-ahead is ciphertext; nothing was returned


def test_every_flipped_header_bit_fails_on_construction(keys: dict[str, Key], cli_file: bytes) -> None:
    """Every bit of the header, the MAC line included: age's header MAC covers all of it, and the
    recipient stanzas are bound to the identity (damage there reads as "no identity matches")."""
    identities = ac.read_identity_file(keys["x25519"].identity)
    kinds: dict[str, int] = {}
    for offset in range(header_length(cli_file)):
        for bit in range(8):
            damaged = bytearray(cli_file)
            damaged[offset] ^= 1 << bit
            with pytest.raises((AgeHeaderError, AgeNoIdentityError)) as caught:
                AgeReader(io.BytesIO(bytes(damaged)), identities)
            kinds[type(caught.value).__name__] = kinds.get(type(caught.value).__name__, 0) + 1
    assert set(kinds) == {"AgeHeaderError", "AgeNoIdentityError"}


def test_header_mac_flip_message(keys: dict[str, Key], cli_file: bytes) -> None:
    mac_offset = header_length(cli_file) - 5
    # Another base64 letter, not a flipped bit: a flipped bit can leave base64 (a parse error, not a MAC
    # one), depending on the random MAC; that made this test fail now and then.
    damaged = bytearray(cli_file)
    damaged[mac_offset] = ord("B") if damaged[mac_offset] == ord("A") else ord("A")
    outcome = decrypt(bytes(damaged), ac.read_identity_file(keys["x25519"].identity))
    assert isinstance(outcome.error, AgeHeaderError)
    assert str(outcome.error) == "decrypt age stream: the age header is damaged (Header MAC is invalid)"
    assert outcome.data == b""


@pytest.mark.parametrize("chunk", [0, 2, 5], ids=["first", "middle", "last"])
def test_flipped_payload_byte_fails_at_its_chunk(chunk: int, keys: dict[str, Key], cli_file: bytes) -> None:
    start = header_length(cli_file) + 16 + chunk * (CHUNK_SIZE + 16)  # after the nonce, 16-byte tag per chunk
    outcome = decrypt(flip(cli_file, start + 7), ac.read_identity_file(keys["x25519"].identity))
    assert isinstance(outcome.error, AgeChunkError)
    assert outcome.error.chunk == chunk
    assert str(outcome.error) == (
        f"decrypt age stream: payload chunk {chunk} (plaintext from byte {chunk * CHUNK_SIZE}) fails "
        "authentication: the object is damaged or truncated"
    )
    assert outcome.data == PAYLOAD[: chunk * CHUNK_SIZE]


def test_flipped_payload_nonce_fails_at_chunk_zero(keys: dict[str, Key], cli_file: bytes) -> None:
    outcome = decrypt(flip(cli_file, header_length(cli_file) + 3), ac.read_identity_file(keys["x25519"].identity))
    assert isinstance(outcome.error, AgeChunkError)
    assert (outcome.error.chunk, outcome.data) == (0, b"")


def test_truncated_on_a_chunk_boundary(keys: dict[str, Key], cli_file: bytes) -> None:
    end = header_length(cli_file) + 16 + 3 * (CHUNK_SIZE + 16)
    outcome = decrypt(cli_file[:end], ac.read_identity_file(keys["x25519"].identity))
    assert isinstance(outcome.error, AgeTruncatedError)
    assert str(outcome.error) == (
        f"decrypt age stream: the object ends after {3 * CHUNK_SIZE} bytes of plaintext without age's final "
        "chunk: truncated"
    )
    assert outcome.data == PAYLOAD[: 3 * CHUNK_SIZE]


def test_truncated_inside_a_chunk(keys: dict[str, Key], cli_file: bytes) -> None:
    outcome = decrypt(cli_file[:-1], ac.read_identity_file(keys["x25519"].identity))
    assert isinstance(outcome.error, AgeChunkError)
    assert (outcome.error.chunk, outcome.data) == (5, PAYLOAD[: 5 * CHUNK_SIZE])


@pytest.mark.parametrize("end", [0, 10, 60])
def test_truncated_inside_the_header(end: int, keys: dict[str, Key], cli_file: bytes) -> None:
    outcome = decrypt(cli_file[:end], ac.read_identity_file(keys["x25519"].identity))
    assert isinstance(outcome.error, AgeHeaderError)
    assert str(outcome.error) == f"decrypt age stream: the age header is truncated ({end} bytes in all)"
    assert outcome.data == b""


def test_trailing_bytes_after_a_short_final_chunk(keys: dict[str, Key], cli_file: bytes) -> None:
    """The final chunk is found by its length, so a byte after it makes it a damaged chunk."""
    outcome = decrypt(cli_file + b"\x00", ac.read_identity_file(keys["x25519"].identity))
    assert isinstance(outcome.error, AgeChunkError)
    assert (outcome.error.chunk, outcome.data) == (5, PAYLOAD[: 5 * CHUNK_SIZE])


def test_trailing_bytes_after_a_full_final_chunk(keys: dict[str, Key], tmp_path: Path) -> None:
    whole = PAYLOAD[: 2 * CHUNK_SIZE]
    (tmp_path / "p").write_bytes(whole)
    run(tool("age"), "-r", keys["x25519"].recipient, "-o", tmp_path / "p.age", tmp_path / "p")
    outcome = decrypt((tmp_path / "p.age").read_bytes() + b"garbage", ac.read_identity_file(keys["x25519"].identity))
    assert isinstance(outcome.error, AgeTrailingDataError)
    assert str(outcome.error) == (
        f"decrypt age stream: bytes follow age's final chunk (after {2 * CHUNK_SIZE} bytes of plaintext)"
    )
    assert outcome.data == whole


class EndlessHeader:
    """An object that starts like age and whose first recipient line runs on for 64 MiB (a hostile object)."""

    def __init__(self) -> None:
        self.sent = 0

    def read(self, size: int) -> bytes:
        data = b"age-encryption.org/v1\n-> X25519 " if not self.sent else b"A" * min(size, (64 << 20) - self.sent)
        self.sent += len(data)
        return data


def test_an_endless_header_is_refused_within_a_bound(keys: dict[str, Key]) -> None:
    """rage buffers the header whole: without our bound, memory grows with the object (300 MiB: 325 MiB RSS)."""
    source = EndlessHeader()
    with pytest.raises(AgeHeaderError) as caught:
        AgeReader(source, ac.read_identity_file(keys["x25519"].identity), name="s3://b/k")
    assert str(caught.value) == (
        "decrypt age s3://b/k: no age header ends within the first 16 MiB (a real one is about 100 bytes per "
        "recipient): not an age file, or a hostile one")
    read_size = 1 << 20
    assert ac.MAX_HEADER_BYTES + 2 * CHUNK_SIZE < source.sent <= ac.MAX_HEADER_BYTES + 2 * CHUNK_SIZE + read_size
    assert [t.name for t in threading.enumerate() if t.name.startswith("age-")] == []


def test_a_header_of_1000_recipients_opens(keys: dict[str, Key]) -> None:
    others = [str(pyrage.x25519.Identity.generate().to_public()) for _ in range(999)]
    data = encrypt(PAYLOAD[:1000], [*others, keys["x25519"].recipient])
    assert header_length(data) > 90_000
    outcome = decrypt(data, ac.read_identity_file(keys["x25519"].identity))
    assert outcome.error is None and outcome.data == PAYLOAD[:1000]


def test_an_armored_file_opens_and_its_damage_is_corruption(keys: dict[str, Key], tmp_path: Path) -> None:
    """``age -a`` writes PEM armor, which ``age -d`` (and rage) read too; damage to the armor is a corrupt
    object (restore's IntegrityError), like damage anywhere else."""
    (tmp_path / "payload").write_bytes(PAYLOAD)
    run(tool("age"), "-a", "-r", keys["x25519"].recipient, "-o", tmp_path / "payload.age", tmp_path / "payload")
    armored = (tmp_path / "payload.age").read_bytes()
    identities = ac.read_identity_file(keys["x25519"].identity)
    assert decrypt(armored, identities).data == PAYLOAD
    end = armored.index(b"-----END")
    for damaged, reason in ((armored + b"garbage\n", "(non-whitespace characters after end marker)"),
                            (armored[:end], "(not wrapped at 64 characters)")):
        outcome = decrypt(damaged, identities)
        assert isinstance(outcome.error, ac.AgeCorruptError)
        assert str(outcome.error) == f"decrypt age stream: the armored age file is damaged {reason}"


def test_a_zip_is_not_an_age_file(keys: dict[str, Key]) -> None:
    outcome = decrypt(b"PK\x03\x04" + bytes(200), ac.read_identity_file(keys["x25519"].identity))
    assert isinstance(outcome.error, AgeHeaderError)
    assert isinstance(outcome.error, CorruptArchiveError)
    assert str(outcome.error) == (
        "decrypt age stream: not an age file (a ZIP): it does not start with b'age-encryption.org/v1'"
    )


# the adapter: threads, the caller's objects, errors from them


def age_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("age-")]


def test_sink_and_source_are_called_only_from_the_callers_thread(keys: dict[str, Key]) -> None:
    callers: set[int] = set()

    class Sink(io.BytesIO):
        def write(self, data: object) -> int:  # type: ignore[override]
            callers.add(threading.get_ident())
            return super().write(data)  # type: ignore[arg-type]

    class Source(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            callers.add(threading.get_ident())
            return super().read(size)

    sink = Sink()
    writer = AgeWriter(sink, ac.parse_recipients(keys["x25519"].recipient))
    writer.write(PAYLOAD)
    writer.close()
    reader = AgeReader(Source(sink.getvalue()), ac.read_identity_file(keys["x25519"].identity), read_size=70_000)
    assert b"".join(iter(lambda: reader.read(1 << 16), b"")) == PAYLOAD
    assert callers == {threading.get_ident()}
    assert age_threads() == []


def test_sink_error_propagates_as_is_and_stops_the_worker(keys: dict[str, Key]) -> None:
    class DiskFullError(OSError):
        pass

    class Sink:
        writes = 0

        def write(self, data: bytes) -> None:
            self.writes += 1
            if self.writes == 2:
                raise DiskFullError("no space left")

    writer = AgeWriter(Sink(), ac.parse_recipients(keys["x25519"].recipient))
    writer.write(PAYLOAD[:CHUNK_SIZE * 2])  # header and the first chunk: write 1
    with pytest.raises(DiskFullError):
        writer.write(PAYLOAD[:CHUNK_SIZE])
    assert age_threads() == []
    with pytest.raises(AgeError, match=r"^encrypt age stream: write after abort$"):
        writer.write(b"more")


def test_source_error_propagates_as_is_and_stops_the_worker(keys: dict[str, Key], cli_file: bytes) -> None:
    class LostConnectionError(Exception):
        pass

    class Source:
        def __init__(self) -> None:
            self.stream = io.BytesIO(cli_file)

        def read(self, size: int) -> bytes:
            if self.stream.tell() >= 3 * CHUNK_SIZE:
                raise LostConnectionError("connection reset")
            return self.stream.read(size)

    reader = AgeReader(Source(), ac.read_identity_file(keys["x25519"].identity), read_size=CHUNK_SIZE)
    with pytest.raises(LostConnectionError):
        while reader.read(CHUNK_SIZE):
            pass
    assert age_threads() == []


def test_abort_and_with_block_stop_the_worker(keys: dict[str, Key]) -> None:
    writer = AgeWriter(io.BytesIO(), ac.parse_recipients(keys["x25519"].recipient))
    writer.write(b"partial")
    assert age_threads() == ["age-encrypt"]
    writer.abort()
    assert age_threads() == []
    with AgeWriter(io.BytesIO(), ac.parse_recipients(keys["x25519"].recipient)) as inside:
        inside.write(b"partial")
    assert age_threads() == []
    with pytest.raises(AgeError, match=r"^encrypt age stream: close after abort$"):
        inside.close()


def test_write_after_close_and_counts(keys: dict[str, Key]) -> None:
    sink = io.BytesIO()
    writer = AgeWriter(sink, ac.parse_recipients(keys["x25519"].recipient))
    writer.write(bytearray(PAYLOAD))
    writer.write(memoryview(b""))
    writer.close()
    writer.close()  # a second close is a no-op
    assert (writer.bytes_in, writer.bytes_out) == (len(PAYLOAD), len(sink.getvalue()))
    assert writer.bytes_out == header_length(sink.getvalue()) + 16 + len(PAYLOAD) + 6 * 16
    with pytest.raises(AgeError, match=r"^encrypt age stream: write after close$"):
        writer.write(b"x")


def test_no_recipients_or_identities(keys: dict[str, Key]) -> None:
    with pytest.raises(AgeKeyError, match=r"^encrypt age s3://b/k: no recipients"):
        AgeWriter(io.BytesIO(), [], name="s3://b/k")
    with pytest.raises(AgeKeyError, match=r"^decrypt age s3://b/k: no identities"):
        AgeReader(io.BytesIO(), [], name="s3://b/k")


# recipients and identities


def test_parse_recipients_accepts_age_and_ssh_keys_with_comments(keys: dict[str, Key]) -> None:
    text = (
        "# backups of prod\n"
        f"{keys['x25519'].recipient.upper()},{keys['ssh-ed25519'].recipient}\n"  # its comment has a comma
        f"   {keys['ssh-rsa'].recipient}   \n"
    )
    recipients = ac.parse_recipients(text)
    assert [type(r).__module__ for r in recipients] == ["pyrage.x25519", "pyrage.ssh", "pyrage.ssh"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            "age1yubikey1qwerty",
            "AGE_RECIPIENTS: recipient 2 (age1yubikey1…): age1yubikey recipients (plugins, post-quantum) are not "
            "supported.",
        ),
        (
            "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= someone",
            "AGE_RECIPIENTS: recipient 2 (ecdsa-sha2-nistp256 AAAAE2Vj…): age does not encrypt to "
            "ecdsa-sha2-nistp256 keys, only ssh-ed25519 and ssh-rsa.",
        ),
        ("ssh-ed25519 AAAAnotbase64", "AGE_RECIPIENTS: recipient 2 (ssh-ed25519 AAAAnotb…): not a valid ssh-ed25519 "
         "public key as age reads it."),
        ("hunter2-my-zip-password", "AGE_RECIPIENTS: recipient 2 (23 characters): not an age recipient (it starts "
         "neither with age1 nor with ssh-)."),
    ],
    ids=["plugin", "ecdsa", "ssh-garbage", "not-a-key"],
)
def test_parse_recipients_names_the_bad_one(bad: str, message: str, keys: dict[str, Key]) -> None:
    good_first, good_last = keys["x25519"].recipient, keys["ssh-ed25519"].recipient
    with pytest.raises(AgeKeyError) as caught:
        ac.parse_recipients(f"{good_first}\n{bad}\n{good_last}")
    text = str(caught.value)
    assert text.startswith(message + " Fix: ")
    assert "\n" not in text
    assert good_first not in text and good_last not in text and bad not in text


def test_parse_recipients_checksum_error(keys: dict[str, Key]) -> None:
    good = keys["x25519"].recipient
    bad = good[:-1] + ("q" if good[-1] != "q" else "p")  # one character changed: the bech32 checksum fails
    with pytest.raises(AgeKeyError) as caught:
        ac.parse_recipients(f"{keys['ssh-rsa'].recipient}, {bad}")
    assert str(caught.value) == (
        f"AGE_RECIPIENTS: recipient 2 ({bad[:12]}…): not a valid age1… public key (bad encoding or checksum). "
        "Fix: give an age1… public key (age-keygen -y key.txt prints it) or an ssh-ed25519/ssh-rsa public key"
    )


def test_a_secret_key_given_as_recipient_is_refused_without_echo(keys: dict[str, Key]) -> None:
    secret = next(line for line in keys["x25519"].identity.read_text().splitlines() if line.startswith("AGE-"))
    with pytest.raises(AgeKeyError) as caught:
        ac.parse_recipients(secret, source="AGE_RECIPIENTS_FILE /etc/pgbkp/recipients")
    assert str(caught.value) == (
        f"AGE_RECIPIENTS_FILE /etc/pgbkp/recipients: recipient 1 ({len(secret)} characters): this is a private "
        "key, not a recipient: it must never be where backups are made. Fix: give its public key instead "
        "(age-keygen -y key.txt, or the .pub file of an SSH key)"
    )


def _ssh_rsa_public_key(bits: int) -> str:
    """An ``ssh-rsa`` public key line with a modulus of ``bits`` bits (its size is all age checks here)."""
    def string(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data
    modulus = (1 << (bits - 1)) | 1
    blob = string(b"ssh-rsa") + string(b"\x01\x00\x01") + string(b"\x00" + modulus.to_bytes(bits // 8, "big"))
    return f"ssh-rsa {base64.b64encode(blob).decode()} odd@size"


@pytest.mark.parametrize(
    ("bits", "reason"),
    [(1024, "an RSA key under 2048 bits, which age refuses as too weak"),
     (8192, "an RSA key over 4096 bits, which rage (the age library pgbkp uses) cannot encrypt to")],
)
def test_an_ssh_rsa_key_of_a_size_age_refuses_says_why(bits: int, reason: str) -> None:
    line = _ssh_rsa_public_key(bits)
    with pytest.raises(AgeKeyError) as caught:
        ac.parse_recipients(line)
    assert str(caught.value).startswith(f"AGE_RECIPIENTS: recipient 1 (ssh-rsa {line[8:16]}…): {reason}. Fix: ")


SECRET = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"


@pytest.mark.parametrize(
    "text",
    [
        "{good},{secret}",  # a secret after a comma: split off, not glued to the public key before it
        "{good}, {secret_lower}",  # bech32 is case-insensitive: the lower-case secret is a secret too
        "{good} {secret}",  # a space instead of a comma
        "{good}\t{secret_lower}",
        "ssh-ed25519;{secret}",
        "age1{secret_lower}",  # glued on: no hrp echoed
    ],
    ids=["comma", "comma-lower", "space", "tab-lower", "glued-ssh", "glued-age1"],
)
def test_a_secret_key_next_to_a_recipient_is_never_echoed(text: str, keys: dict[str, Key]) -> None:
    given = text.format(good=keys["x25519"].recipient, secret=SECRET, secret_lower=SECRET.lower())
    with pytest.raises(AgeKeyError) as caught:
        ac.parse_recipients(given)
    message = str(caught.value).lower()
    assert "this is a private key" in message or "holds a space" in message
    assert "gfpyysjz" not in message and "secret-key" not in message


@pytest.mark.parametrize(
    "item",
    ["sk-proj-0123456789abcdefghijklmnopqrstuvwx",  # an API token, not an SSH key type
     "ssh-ed25519\u00a0AAAAC3NzaC1lZDI1NTE5AAAAIG",  # a no-break space: not the type
     "age1qqqqqq\u200bqqqqqqqqqqq"],  # an invisible character: not shown
    ids=["sk-token", "nbsp", "zero-width"],
)
def test_an_unknown_key_type_or_lookalike_is_shown_by_length_only(item: str) -> None:
    with pytest.raises(AgeKeyError) as caught:
        ac.parse_recipients(item)
    text = str(caught.value)
    assert text.startswith(f"AGE_RECIPIENTS: recipient 1 ({len(item)} characters): ")
    assert item[4:12] not in text


def test_recipients_with_crlf_a_bom_and_duplicates_parse(keys: dict[str, Key]) -> None:
    good, ssh = keys["x25519"].recipient, keys["ssh-ed25519"].recipient
    recipients = ac.parse_recipients(f"\ufeff{good}\r\n{ssh}\r\n{good}\r\n{ssh} laptop private key\r\n")
    assert [str(r) for r in recipients[::2]] == [good, good] and len(recipients) == 4  # a comment is a comment


def test_parse_recipients_empty() -> None:
    with pytest.raises(AgeKeyError, match=r"^AGE_RECIPIENTS: no recipient\. Fix: "):
        ac.parse_recipients("# nobody\n\n")


def test_parse_identities_several_keys_and_comments(keys: dict[str, Key], cli_file: bytes) -> None:
    other = run(tool("age-keygen"))
    mine = keys["x25519"].identity.read_bytes()
    identities = ac.parse_identities(other + b"\r\n# second key\r\n" + mine, source="AGE_IDENTITY_FILE")
    assert len(identities) == 2
    assert decrypt(cli_file, identities).data == PAYLOAD


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"# created\nAGE-SECRET-KEY-1QQQQ\n", "AGE_IDENTITY_FILE, line 2: not a valid age secret key (bad encoding "
         "or checksum)"),
        (b"# created\n\nhunter2 secret words\n", "AGE_IDENTITY_FILE, line 3: not an age identity (AGE-SECRET-KEY-1…). "
         "Fix: give the file age-keygen wrote, or an unencrypted SSH private key"),
        (b"AGE-PLUGIN-YUBIKEY-1QQQQ\n", "AGE_IDENTITY_FILE, line 1: plugin identities are not supported. Fix: use an "
         "age-keygen (X25519) key"),
        (b"# only a comment\n", "AGE_IDENTITY_FILE: holds no identity. Fix: give the file age-keygen wrote "
         "(AGE-SECRET-KEY-1…)"),
        (b"\xff\xfe", "AGE_IDENTITY_FILE: not an identity file (not UTF-8 text). Fix: give an age-keygen key file"),
    ],
    ids=["checksum", "not-a-key", "plugin", "empty", "binary"],
)
def test_parse_identities_names_the_line_not_the_content(content: bytes, message: str) -> None:
    with pytest.raises(AgeKeyError) as caught:
        ac.parse_identities(content, source="AGE_IDENTITY_FILE")
    assert str(caught.value) == message


def test_passphrase_protected_ssh_key_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "id_locked"
    run(tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", PASSPHRASE, "-f", path)
    with pytest.raises(AgeKeyError) as caught:
        ac.read_identity_file(path, passphrase=PASSPHRASE)
    assert str(caught.value) == (
        f"identity file {path}: the SSH key is passphrase-protected, which pgbkp cannot open. Fix: use an age "
        "identity file protected with age -p, or a copy of the key without its passphrase (ssh-keygen -p)"
    )
    assert PASSPHRASE not in str(caught.value)


def test_ssh_key_type_age_cannot_use(tmp_path: Path) -> None:
    path = tmp_path / "id_ecdsa"
    run(tool("ssh-keygen"), "-q", "-t", "ecdsa", "-N", "", "-f", path)
    with pytest.raises(AgeKeyError, match=r"^identity file .*: not an SSH private key age can use"):
        ac.read_identity_file(path)


def test_unreadable_identity_file(tmp_path: Path) -> None:
    with pytest.raises(AgeKeyError) as caught:
        ac.read_identity_file(tmp_path / "missing.txt")
    assert str(caught.value) == (
        f"read identity file {tmp_path / 'missing.txt'}: No such file or directory. Fix: give a readable file"
    )


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "too-large"])
def test_an_identity_file_that_is_no_file_or_too_large_is_refused_without_waiting(kind: str, tmp_path: Path) -> None:
    """A FIFO with no writer used to block restore forever, /dev/zero to fill the memory."""
    path = {"fifo": tmp_path / "key", "device": Path("/dev/zero"), "directory": tmp_path,
            "too-large": tmp_path / "big"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "too-large":
        path.write_bytes(b"#" * (ac.MAX_IDENTITY_BYTES + 1))
    with pytest.raises(AgeKeyError) as caught:
        ac.read_identity_file(path)
    said = {"fifo": f"identity file {path}: holds no identity. Fix: give the file age-keygen wrote (AGE-SECRET-KEY-1…)",
            "device": f"read identity file {path}: it is a device or socket, not a regular file. Fix: give a "
                      "readable file",
            "directory": f"read identity file {path}: it is a directory, not a regular file. Fix: give a readable "
                         "file",
            "too-large": f"read identity file {path}: larger than 1024 KiB, which no identity file is. Fix: give the "
                         "file age-keygen wrote, or an SSH private key"}[kind]
    assert str(caught.value) == said


def test_an_identity_from_a_pipe_is_read(keys: dict[str, Key]) -> None:
    """``AGE_IDENTITY_FILE=<(pass show age-key)``: the shell passes a pipe, /dev/fd/N; the key never touches disk."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, keys["x25519"].identity.read_bytes())
        os.close(write_end)
        [identity] = ac.read_identity_file(f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)
    assert pyrage.decrypt(pyrage.encrypt(b"x", [pyrage.x25519.Recipient.from_str(keys["x25519"].recipient)]),
                          [identity]) == b"x"


def test_pyproject_requires_the_pinned_pyrage_range() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"pyrage{ac.PYRAGE_RANGE}" in dependencies


# memory: a 200 MiB stream through both sides


MEMORY_CHILD = r"""
import hashlib, json, os, sys
from pgbkp.archive import agecrypt as ac
import pyrage

MIB = 1 << 20
identity = pyrage.x25519.Identity.generate()
base = os.urandom(MIB)


class Pipe:
    # The writer's sink and the reader's source: the reader's demand drives the writer, one 1 MiB write at
    # a time, so no more than one write's ciphertext is ever waiting here.
    def __init__(self, blocks):
        self.buffer = bytearray()
        self.blocks = iter(range(blocks))
        self.writer = None
        self.sha_in = hashlib.sha256()

    def write(self, data):
        self.buffer += data

    def read(self, size):
        while len(self.buffer) < size and self.writer is not None:
            index = next(self.blocks, None)
            if index is None:
                self.writer.close()
                self.writer = None
            else:
                block = index.to_bytes(8, "big") + base[8:]
                self.sha_in.update(block)
                self.writer.write(block)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


def round_trip(blocks):
    pipe = Pipe(blocks)
    pipe.writer = ac.AgeWriter(pipe, [identity.to_public()])
    reader = ac.AgeReader(pipe, [identity])
    sha_out = hashlib.sha256()
    total = 0
    while data := reader.read(MIB):
        sha_out.update(data)
        total += len(data)
    return pipe.sha_in.hexdigest(), sha_out.hexdigest(), total


def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(field + ":"))


round_trip(4)  # warm-up: thread stacks, allocator arenas
# The high-water mark survives exec (it would show pytest's own size): reset it to the current RSS (proc(5)).
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")
baseline = status("VmRSS")
sha_in, sha_out, total = round_trip(int(sys.argv[1]))
peak = status("VmHWM")
print(json.dumps({"baseline_kib": baseline, "peak_kib": peak, "sha_in": sha_in, "sha_out": sha_out, "total": total}))
"""


def test_200_mib_stream_stays_bounded_in_memory_and_writes_no_file(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(ROOT / "handler")}
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, "200"], cwd=scratch, env=env, capture_output=True, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    figures = json.loads(done.stdout)
    assert figures["total"] == 200 << 20
    assert figures["sha_out"] == figures["sha_in"]
    growth_mib = (figures["peak_kib"] - figures["baseline_kib"]) / 1024
    print(f"age round trip of 200 MiB: peak RSS {figures['peak_kib'] / 1024:.1f} MiB, {growth_mib:.1f} MiB over the "
          f"4 MiB warm-up")
    assert growth_mib < 16, figures  # the stream is 200 MiB: any buffering of it would show here
    assert list(scratch.iterdir()) == []


@pytest.fixture(autouse=True)
def _no_leftover_worker() -> Iterator[None]:
    yield
    assert age_threads() == []
