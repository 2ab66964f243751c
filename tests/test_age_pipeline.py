"""age wired into the configuration, the keys and the pipeline (issue 15, phase 2), on MemoryStorage.

The object is the ZIP encrypted as one age file, ``….zip.age``; retention and listing see it beside v1's
``.zip`` backups as one series; a bad recipient or ZIP_PASSWORD with age stops the run before any work.
The same on real servers, with the stock ``age`` CLI, 7z, bsdtar and psql: tests/test_age_backup.py.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from datetime import datetime
from pathlib import Path

import pyrage
import pytest

from pgbkp import config, handler_core, integrity, keys, pipeline, restore
from pgbkp.archive import iter_member
from pgbkp.config import ConfigError
from pgbkp.storage.memory import MemoryStorage
from tests.fakes import FakeDatabase, FakeDumpSource
from tests.helpers import run_cli

BUCKET = "bkt"
ENV = {"PG_URLS": "main|postgres://u@db.invalid/postgres", "S3_BUCKET": BUCKET, "TIMEZONE": "UTC",
       "COMPRESSION_THREADS": "1"}
#: Dump-like text over several age chunks (64 KiB of plaintext each) once deflated.
BODY = b"".join(b"INSERT INTO t VALUES (%d, '%s');\n" % (i, str(i * 7919 % 100003).encode() * 3)
                for i in range(40_000))


def new_key() -> tuple[object, str]:
    """An X25519 identity and its recipient string."""
    identity = pyrage.x25519.Identity.generate()
    return identity, str(identity.to_public())


def edge_for(store: MemoryStorage, source: FakeDumpSource) -> handler_core.Edge:
    return handler_core.Edge(storage_for=lambda conn: store, source=source)


def age_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("age-")]


def test_an_age_backup_is_the_zip_as_one_age_file() -> None:
    ident, recipient = new_key()
    other_ident, other = new_key()
    source = FakeDumpSource({"main": [FakeDatabase("app", BODY)]}, chunk=1 << 16)
    store = MemoryStorage([BUCKET])
    env = {**ENV, "AGE_RECIPIENTS": f"{recipient},\n  {other}\n# the team's offline key\n"}

    summary = handler_core.handle({"connection": "main"}, config=config.load(env), edge=edge_for(store, source))

    [result] = summary["results"]
    key = result["key"]
    assert key.startswith("main/app/main-app-") and key.endswith("y.zip.age")
    body, meta, _ = store.objects[BUCKET][key]
    assert meta == {**meta, "encryption": "age", integrity.METADATA_KEY: integrity.METADATA_VALUE}
    assert result["object_bytes"] == len(body) and body.startswith(b"age-encryption.org/v1\n")
    for identity in (ident, other_ident):  # each recipient opens it
        archive = pyrage.decrypt(body, [identity])
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            member = key.rsplit("/", 1)[1].removesuffix(".zip.age") + ".sql"
            assert zf.namelist() == [keys.member_name(key)] == [member]
            assert zf.read(zf.namelist()[0]) == BODY
            record = integrity.parse(zf.comment)  # the integrity record stays inside the ZIP
        assert record.raw_size == len(BODY)
        assert b"".join(iter_member(io.BytesIO(archive))) == BODY
    assert store.pending == {} and age_threads() == []


def test_a_failed_dump_under_age_leaves_no_object_no_upload_and_no_thread() -> None:
    _, recipient = new_key()
    source = FakeDumpSource({"main": [FakeDatabase("shop", BODY, fail="connection lost")]}, chunk=1 << 16)
    store = MemoryStorage([BUCKET])
    env = {**ENV, "AGE_RECIPIENTS": recipient}
    with pytest.raises(handler_core.BackupFailedError) as err:
        handler_core.handle({"connection": "main"}, config=config.load(env), edge=edge_for(store, source))
    [shop] = err.value.summary["results"]
    assert shop["error"] == "pg_dump 'shop': connection lost; the dump is incomplete"
    assert store.objects[BUCKET] == {} and store.pending == {} and age_threads() == []


def test_a_stop_mid_stream_under_age_leaves_no_object_no_upload_and_no_thread() -> None:
    """SIGTERM's path (the edge's stop request) after age has sent whole chunks into the upload."""
    _, recipient = new_key()
    stop = threading.Event()
    store = MemoryStorage([BUCKET])

    def stop_once_age_wrote(where: str, reads: int) -> None:
        if reads == 20:  # 1.3 MB of dump read, several age chunks of ZIP written: the upload is open
            assert len(store.pending) == 1 and age_threads() == ["age-encrypt"]
            stop.set()

    source = FakeDumpSource({"main": [FakeDatabase("app", BODY), FakeDatabase("next", b"-- next\n")]},
                            chunk=1 << 16, on_read=stop_once_age_wrote)
    edge = handler_core.Edge(storage_for=lambda conn: store, source=source, should_stop=stop.is_set)
    with pytest.raises(handler_core.BackupFailedError) as err:
        # One at a time, so that the second database is the one the stop keeps from starting.
        handler_core.handle({"connection": "main"}, edge=edge, config=config.load(
            {**ENV, "AGE_RECIPIENTS": recipient, "DATABASE_CONCURRENCY": "1"}))
    app, following = err.value.summary["results"]
    assert app["error"] == f"backup s3://{BUCKET}/{app['key']}: stopped before the dump finished"
    assert following["error"] == f"backup s3://{BUCKET}/{following['key']}: not started: the run was asked to stop"
    assert store.objects[BUCKET] == {} and store.pending == {} and age_threads() == []


def test_age_per_connection_and_off_for_one() -> None:
    ident_global, global_recipient = new_key()
    ident_own, own_recipient = new_key()
    env = {**ENV, "AGE_RECIPIENTS": global_recipient,
           "PG_URLS": ("plainzip|age=off|postgres://u@a.invalid/postgres,"
                       f"own|age={own_recipient}|postgres://u@b.invalid/postgres,"
                       "glob|postgres://u@c.invalid/postgres")}
    cfg = config.load(env)
    assert [c.age is None for c in cfg.connections] == [True, False, False]
    source = FakeDumpSource({name: [FakeDatabase("app", b"-- app\n")] for name in ("plainzip", "own", "glob")})
    store = MemoryStorage([BUCKET])
    handler_core.handle({}, config=cfg, edge=edge_for(store, source))
    found = {k.split("/")[0]: k for k in store.objects[BUCKET]}
    assert found["plainzip"].endswith("y.zip")
    assert b"".join(iter_member(io.BytesIO(store.objects[BUCKET][found["plainzip"]][0]))) == b"-- app\n"
    for name, right, wrong in (("own", ident_own, ident_global), ("glob", ident_global, ident_own)):
        body = store.objects[BUCKET][found[name]][0]
        assert found[name].endswith("y.zip.age")
        assert b"".join(iter_member(io.BytesIO(pyrage.decrypt(body, [right])))) == b"-- app\n"
        with pytest.raises(pyrage.DecryptError):
            pyrage.decrypt(body, [wrong])


def test_zip_and_zip_age_backups_are_one_series_for_retention_and_list() -> None:
    _, recipient = new_key()
    env = {**ENV, "AGE_RECIPIENTS": recipient, "RETENTION_DAYS": "1"}
    cfg = config.load(env)
    conn = cfg.connections[0]
    store = MemoryStorage([BUCKET])
    old_zip = keys.object_key("", conn.base_dir, "app", datetime(2020, 1, 1, 3, 0), conn.prefix)
    old_age = keys.object_key("", conn.base_dir, "app", datetime(2021, 1, 1, 3, 0), conn.prefix, keys.AGE_SUFFIX)
    other_db = keys.object_key("", conn.base_dir, "app2", datetime(2020, 1, 1, 3, 0), conn.prefix, keys.AGE_SUFFIX)
    for key in (old_zip, old_age):
        store.put(BUCKET, key, b"old")
    store.put(BUCKET, other_db.replace("/app2/", "/app/"), b"not ours: another database's name in app's folder")
    listed = restore.find_backups(cfg, conn, "app", storage=store)
    assert [(b.key, b.format, b.taken) for b in listed] == [
        (old_age, "zip.age", datetime(2021, 1, 1, 3, 0)), (old_zip, "zip", datetime(2020, 1, 1, 3, 0))]

    source = FakeDumpSource({"main": [FakeDatabase("app", b"-- app\n")]})
    summary = handler_core.handle({"connection": "main"}, config=cfg, edge=edge_for(store, source))
    [result] = summary["results"]
    assert sorted(d["key"] for d in result["retention"]["deleted"]) == sorted([old_zip, old_age])
    assert sorted(store.objects[BUCKET]) == sorted([result["key"], other_db.replace("/app2/", "/app/")])


def test_keys_parse_and_name_both_forms() -> None:
    when = datetime(2025, 3, 4, 5, 6)
    zip_name = keys.filename("we/ird", when, "p")
    age_name = keys.filename("we/ird", when, "p", keys.AGE_SUFFIX)
    stem = "p-we%2Fird-05h-06m-04d-03mes-2025y"
    assert (zip_name, age_name) == (f"{stem}.zip", f"{stem}.zip.age")
    assert keys.parse_filename(zip_name, "we/ird", "p") == keys.parse_filename(age_name, "we/ird", "p") == when
    assert keys.member_name(f"x/y/{age_name}") == keys.member_name(f"x/y/{zip_name}") == f"{stem}.sql"
    assert (keys.is_age(age_name), keys.is_age(zip_name)) == (True, False)
    for stray in (age_name + ".age", zip_name + "age", zip_name.removesuffix(".zip") + ".age", age_name + ".tmp"):
        assert keys.parse_filename(stray, "we/ird", "p") is None, stray
    with pytest.raises(ValueError):
        keys.filename("db", when, None, ".gpg")


# configuration errors: one line, the bad item named, nothing else echoed


def check(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as err:
        pipeline.check_encryption(config.load({**ENV, **env}))
    return str(err.value)


def test_a_bad_recipient_is_named_by_position_without_echoing_the_list() -> None:
    _, good = new_key()
    broken = good[:-6] + ("qqqqqq" if not good.endswith("qqqqqq") else "pppppp")
    message = check({"AGE_RECIPIENTS": f"{good}, {broken}, {good}"})
    assert message == (f"AGE_RECIPIENTS: recipient 2 ({broken[:12]}…): not a valid age1… public key (bad encoding or "
                       "checksum). Fix: give an age1… public key (age-keygen -y key.txt prints it) or an "
                       "ssh-ed25519/ssh-rsa public key")
    assert good not in message and broken not in message


def test_a_private_key_given_as_recipient_is_refused_unechoed() -> None:
    secret = pyrage.x25519.Identity.generate()
    text = str(secret)
    message = check({"AGE_RECIPIENTS": text})
    assert message.startswith("AGE_RECIPIENTS: recipient 1 (")
    assert "this is a private key, not a recipient" in message and text not in message and text[15:40] not in message


def test_a_bad_recipient_stops_the_run_before_any_work() -> None:
    _, good = new_key()
    source = FakeDumpSource({"main": [FakeDatabase("app", b"-- app\n")]})
    store = MemoryStorage([BUCKET])
    with pytest.raises(ConfigError, match=r"^PG_URLS item 1 \(main\): field 'age': recipient 1 \(ecdsa-sha2-nistp256"):
        handler_core.handle({}, config=config.load({**ENV, "PG_URLS": "main|age=ecdsa-sha2-nistp256 AAAAE2VjZHNh|"
                                                    "postgres://u@db.invalid/postgres"}),
                            edge=edge_for(store, source))
    assert source.events == [] and store.objects[BUCKET] == {}
    assert good  # the global recipients are replaced by the item's, not added to


def test_zip_password_and_age_are_refused_for_backups_but_not_for_restore() -> None:
    _, good = new_key()
    env = {**ENV, "AGE_RECIPIENTS": good, "ZIP_PASSWORD": "a long zip passphrase"}
    expected = ("ZIP_PASSWORD and AGE_RECIPIENTS are both set for PG_URLS item 1 (main) (through AGE_RECIPIENTS): a "
                "backup is encrypted one way. Fix: unset ZIP_PASSWORD where backups are made (age replaces it); keep "
                "it only where you restore the .zip backups it made.")
    assert check(env) == expected
    source = FakeDumpSource({"main": [FakeDatabase("app", b"-- app\n")]})
    with pytest.raises(ConfigError) as err:
        handler_core.handle({}, config=config.load(env), edge=edge_for(MemoryStorage([BUCKET]), source))
    assert str(err.value) == expected and source.events == []
    # restore and verify load the same settings: ZIP_PASSWORD opens .zip, the identity opens .zip.age
    assert config.load(env).zip_password is not None
    # one connection with age=off is fine
    check_off = {**env, "PG_URLS": "main|age=off|postgres://u@db.invalid/postgres,"
                                   "other|postgres://u@b.invalid/postgres"}
    assert "PG_URLS item 2 (other)" in check(check_off)


def test_recipients_file_is_read_at_load(tmp_path: Path) -> None:
    ident, recipient = new_key()
    _, extra = new_key()
    listing = tmp_path / "recipients.txt"
    listing.write_text(f"# the restore team\n{recipient}\n\n# offsite\n{extra}\n")
    cfg = config.load({**ENV, "AGE_RECIPIENTS_FILE": str(listing)})
    assert len(pipeline.age_recipients(cfg, cfg.connections[0]) or []) == 2
    both = config.load({**ENV, "AGE_RECIPIENTS_FILE": str(listing), "AGE_RECIPIENTS": extra})
    assert len(pipeline.age_recipients(both, both.connections[0]) or []) == 3  # added, as age -r and -R

    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError) as err:
        config.load({**ENV, "AGE_RECIPIENTS_FILE": str(missing)})
    assert str(err.value) == (f"AGE_RECIPIENTS_FILE: cannot read '{missing}' (No such file or directory). Fix: point "
                              "it at a readable file of age recipients, one per line.")
    listing.write_text(f"{recipient}\nnot-a-key\n")
    assert check({"AGE_RECIPIENTS_FILE": str(listing)}) == (
        f"AGE_RECIPIENTS_FILE {listing}: recipient 2 (9 characters): not an age recipient (it starts neither with age1 "
        "nor with ssh-). Fix: give an age1… public key (age-keygen -y key.txt prints it) or an ssh-ed25519/ssh-rsa "
        "public key")
    assert ident is not None


@pytest.mark.parametrize("kind", ["device", "directory"])
def test_a_recipients_file_that_is_no_file_is_refused_unread(kind: str, tmp_path: Path) -> None:
    """/dev/zero used to be read at start-up until the 1 MiB cut, then parsed as one recipient."""
    path = {"device": Path("/dev/zero"), "directory": tmp_path}[kind]
    with pytest.raises(ConfigError) as err:
        config.load({**ENV, "AGE_RECIPIENTS_FILE": str(path)})
    assert str(err.value) == (f"AGE_RECIPIENTS_FILE: '{path}' is a {kind}, not a regular file. Fix: point it at a "
                              "file of age recipients, one per line.")


def test_a_recipients_file_may_be_a_pipe_and_a_fifo_never_blocks(tmp_path: Path) -> None:
    """``age -R <(…)`` reads a pipe; a named FIFO nobody writes to used to block start-up forever."""
    _, recipient = new_key()
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, f"# from a pipe\n{recipient}\n".encode())
        os.close(write_end)
        cfg = config.load({**ENV, "AGE_RECIPIENTS_FILE": f"/dev/fd/{read_end}"})
    finally:
        os.close(read_end)
    assert len(pipeline.age_recipients(cfg, cfg.connections[0]) or []) == 1
    fifo = tmp_path / "recipients"
    os.mkfifo(fifo)
    empty = config.load({**ENV, "AGE_RECIPIENTS_FILE": str(fifo)})
    with pytest.raises(ConfigError, match=rf"^AGE_RECIPIENTS_FILE {fifo}: no recipient\. Fix: "):
        pipeline.age_recipients(empty, empty.connections[0])


def test_a_recipients_file_too_large_is_refused_not_cut(tmp_path: Path) -> None:
    """Cut at 1 MiB, the recipients after the cut would silently get no access to the backups."""
    _, recipient = new_key()
    listing = tmp_path / "recipients.txt"
    listing.write_text(f"# {'x' * (1 << 20)}\n{recipient}\n")
    with pytest.raises(ConfigError) as err:
        config.load({**ENV, "AGE_RECIPIENTS_FILE": str(listing)})
    assert str(err.value) == (f"AGE_RECIPIENTS_FILE: '{listing}' is larger than 1024 KiB, far more than a list of "
                              "public keys. Fix: point it at a file of age recipients, one per line.")


def test_an_identity_where_backups_are_made_is_a_warning_naming_only_the_settings(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    ident, recipient = new_key()
    secret = str(ident)
    key_file = tmp_path / "key.txt"
    key_file.write_text(secret + "\n")
    source = FakeDumpSource({"main": [FakeDatabase("app", b"-- app\n")]})
    store = MemoryStorage([BUCKET])
    env = {**ENV, "AGE_RECIPIENTS": recipient, "AGE_IDENTITY_FILE": str(key_file),
           "AGE_IDENTITY_PASSPHRASE": "a passphrase nobody should see"}
    with caplog.at_level("WARNING", logger="pgbkp.pipeline"):
        handler_core.handle({"connection": "main"}, config=config.load(env), edge=edge_for(store, source))
    assert [r.getMessage() for r in caplog.records if r.name == "pgbkp.pipeline"] == [
        "AGE_IDENTITY_FILE and AGE_IDENTITY_PASSPHRASE are set where backups are made: whoever takes over this "
        "machine or role can read every .zip.age backup, which age is there to prevent. Fix: unset them for backups; "
        "keep the identity only where you restore or verify (docs/age.md)"]
    assert secret not in caplog.text and "nobody should see" not in caplog.text and str(key_file) not in caplog.text
    assert len(store.objects[BUCKET]) == 1  # a warning, not a refusal

    caplog.clear()
    with caplog.at_level("WARNING", logger="pgbkp.pipeline"):
        handler_core.handle({"connection": "main"}, config=config.load({**ENV, "AGE_RECIPIENTS": recipient}),
                            edge=edge_for(MemoryStorage([BUCKET]), source))
    assert [r for r in caplog.records if r.name == "pgbkp.pipeline"] == []


def test_an_empty_age_field_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^PG_URLS item 1 \(main\): field 'age' is empty\. Fix: .*age=off"):
        config.load({**ENV, "PG_URLS": "main|age=|postgres://u@db.invalid/postgres"})


def test_pgbkp_backup_with_a_bad_recipient_exits_2_with_one_line() -> None:
    _, good = new_key()
    bad = "age1" + "q" * 58
    out = run_cli(["backup"], {**ENV, "AGE_RECIPIENTS": f"{good}\n{bad}"})
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "AGE_RECIPIENTS" in ln]
    assert len(lines) == 1 and "recipient 2 (age1qqqqqqqq…)" in lines[0] and "Fix:" in lines[0]
    assert good not in out.stderr and bad not in out.stderr and "Traceback" not in out.stderr


def test_lambda_reads_recipients_and_a_verify_identity_from_secrets() -> None:
    """AGE_RECIPIENTS_SECRET_ID for the backup function; AGE_IDENTITY_SECRET_ID for a verify function only."""
    from pgbkp import settings_secrets
    from pgbkp.redact import redact

    ident, recipient = new_key()
    identity_text = f"# created: for the verify function\n{ident}\n"
    store = {("secretsmanager", "pgbkp/age-recipients"): f'{{"AGE_RECIPIENTS": "{recipient}"}}',
             ("ssm", "/pgbkp/age-identity"): identity_text}
    fetched: list[str] = []

    def fetch(kind: str, secret_id: str, max_age: int) -> str:
        fetched.append(secret_id)
        return store[(kind, secret_id)]

    backup_env = settings_secrets.resolve({**ENV, "AGE_RECIPIENTS_SECRET_ID": "pgbkp/age-recipients"}, fetch)
    cfg = config.load(backup_env)
    assert len(pipeline.age_recipients(cfg, cfg.connections[0]) or []) == 1 and "AGE_IDENTITY" not in backup_env
    verify_env = settings_secrets.resolve({**ENV, "AGE_IDENTITY_SECRET_ID": "/pgbkp/age-identity"}, fetch)
    assert fetched == ["pgbkp/age-recipients", "/pgbkp/age-identity"]
    [opened] = restore.AgeIdentities(verify_env).get("s3://b/k.zip.age")
    archive = pyrage.encrypt(b"proof", [pyrage.x25519.Recipient.from_str(recipient)])
    assert pyrage.decrypt(archive, [opened]) == b"proof"
    assert str(ident) not in redact(f"leak? {ident}")
    with pytest.raises(restore.IdentityError, match=r"both AGE_IDENTITY_FILE and AGE_IDENTITY are set\. Fix: keep one"):
        restore.AgeIdentities({**verify_env, "AGE_IDENTITY_FILE": "/k.txt"}).get("s3://b/k.zip.age")


def test_an_identity_that_cannot_be_opened_is_tried_once_per_verify(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """verify asks for the identity per backup; with a wrong passphrase each try costs an scrypt (about a
    second), so a failure is kept. (A file that is no identity here: the same path, without the scrypt.)"""
    broken = tmp_path / "key.txt"
    broken.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    opened: list[str] = []
    real = restore.read_identity_file

    def counting(path: str, *, passphrase: str | None = None) -> list[object]:
        opened.append(path)
        return real(path, passphrase=passphrase)

    identities = restore.AgeIdentities({"AGE_IDENTITY_FILE": str(broken)})
    monkeypatch.setattr(restore, "read_identity_file", counting)
    for url in ("s3://b/one.zip.age", "s3://b/two.zip.age"):
        with pytest.raises(restore.IdentityError) as err:
            identities.get(url)
        assert str(err.value) == (
            f"restore {url}: the backup is encrypted with age (.zip.age): identity file {broken}, line 1: not a "
            "valid age secret key (bad encoding or checksum); nothing was read or sent.")
    assert opened == [str(broken)]


def test_the_globals_backup_under_age_is_a_zip_age_that_restore_globals_reads() -> None:
    """restore --globals takes the same age path (verify without --scratch-url: read and checked only)."""
    ident, recipient = new_key()
    dump = b"CREATE ROLE app;\n--\n-- PostgreSQL database cluster dump complete\n--\n\n"
    source = FakeDumpSource({"main": [FakeDatabase("app", b"-- app\n")]},
                            globals={"main": FakeDatabase(keys.GLOBALS, dump)})
    store = MemoryStorage([BUCKET])
    cfg = config.load({**ENV, "AGE_RECIPIENTS": recipient, "BACKUP_GLOBALS": "true"})
    summary = handler_core.handle({"connection": "main"}, config=cfg, edge=edge_for(store, source))
    [glob] = [r for r in summary["results"] if r["kind"] == "globals"]
    assert glob["key"].endswith("y.zip.age") and glob["status"] == "ok"
    ref = restore.select_backup(cfg, "main", globals_only=True, storage=store)
    assert ref.key == glob["key"] and ref.format == "zip.age"

    done = restore.restore_globals(cfg, ref, None, storage=store,
                                   identities=restore.AgeIdentities({"AGE_IDENTITY": str(ident)}))
    assert done.checks[:2] == ["age authentication (every 64 KiB chunk)", "ZIP CRC-32"]
    with pytest.raises(restore.IdentityError, match=r"no identity matches"):
        restore.restore_globals(cfg, ref, None, storage=store,
                                identities=restore.AgeIdentities({"AGE_IDENTITY": str(new_key()[0])}))
