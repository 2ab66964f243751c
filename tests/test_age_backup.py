"""age end to end on real servers (issue 15): pgbkp backup → ``.zip.age`` in S3 (moto) → the stock ``age`` CLI,
7z, bsdtar and psql; ``pgbkp restore``/``verify`` with X25519, ``age -p`` and SSH identities; and each
damage refused with the target untouched.

One backup of one source database is made per module (in its own bucket, on the session's S3 server) and
every test reads it or a damaged copy of it.
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgbkp import config as config_mod
from pgbkp import integrity, keys, restore
from pgbkp.archive import ZipStreamWriter, iter_member
from pgbkp.archive.agecrypt import AgeReader, AgeWriter, parse_recipients, read_identity_file
from tests.helpers import HOSTILE_SQL, all_keys, dump_sql, pending_uploads, run_cli, s3_client
from tests.servers import PgCluster, S3Server
from tests.test_agecrypt import PASSPHRASE, Key, protect_with_age_p, run, tool
from tests.test_restore import s3_store, unique, user_objects

PREFIX = "ag"
#: Big enough that the object spans many 64 KiB age chunks, so damage in the middle lands after SQL was sent.
SQL = (HOSTILE_SQL + ";\nCREATE TABLE bulk (id int, t text);\n"
       "INSERT INTO bulk SELECT i, md5(i::text) FROM generate_series(1, 12000) i;")


class Backup:
    """The module's backup: its environment (recipients only), bucket, key, object bytes and source."""

    def __init__(self, env: dict[str, str], bucket: str, key: str, body: bytes, source: str) -> None:
        self.env, self.bucket, self.key, self.body, self.source = env, bucket, key, body, source


@pytest.fixture(scope="module")
def age_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    folder = tmp_path_factory.mktemp("age-e2e-keys")
    found = {}
    for name in ("x25519", "stranger"):
        path = folder / f"{name}.txt"
        run(tool("age-keygen"), "-o", path)
        found[name] = Key(path, run(tool("age-keygen"), "-y", path).decode().strip())
    ssh = folder / "id_ed25519"
    run(tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "restore@team", "-f", ssh)
    found["ssh-ed25519"] = Key(ssh, ssh.with_suffix(".pub").read_text().strip())
    protected = folder / "x25519.txt.age"
    protect_with_age_p(found["x25519"].identity, protected, PASSPHRASE)
    found["passphrase"] = Key(protected, found["x25519"].recipient)
    return found


@pytest.fixture(scope="module")
def source_db(pg: PgCluster) -> Iterator[str]:
    with pg.temporary_database(unique("src_age"), SQL) as name:
        yield name


@pytest.fixture(scope="module")
def backup(pg: PgCluster, s3_server: S3Server, age_keys: dict[str, Key], source_db: str) -> Backup:
    """``pgbkp backup`` with AGE_RECIPIENTS (an X25519 and an SSH key) and nothing that decrypts."""
    bucket = f"age-{uuid.uuid4().hex[:8]}"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    env = {**s3_server.env(), "PG_URLS": f"{PREFIX}|bucket={bucket}|{pg.url()}", "TIMEZONE": "UTC",
           "COMPRESSION_THREADS": "2",
           "AGE_RECIPIENTS": f"{age_keys['x25519'].recipient},{age_keys['ssh-ed25519'].recipient}"}
    out = run_cli(["backup", "--database", source_db], env)
    assert out.returncode == 0, out.stderr
    [key] = all_keys(s3_server, bucket)
    body = s3_client(s3_server).get_object(Bucket=bucket, Key=key)["Body"].read()
    return Backup(env, bucket, key, body, source_db)


def restore_env(b: Backup, identity: Path, passphrase: str | None = None) -> dict[str, str]:
    """Where restores happen: the identity, and no recipients needed."""
    env = {k: v for k, v in b.env.items() if k != "AGE_RECIPIENTS"}
    env["AGE_IDENTITY_FILE"] = str(identity)
    if passphrase is not None:
        env["AGE_IDENTITY_PASSPHRASE"] = passphrase
    return env


def test_the_object_opens_with_age_then_7z_bsdtar_and_psql(pg: PgCluster, s3_server: S3Server, backup: Backup,
                                                           age_keys: dict[str, Key], tmp_path: Path) -> None:
    assert backup.key.startswith(f"{PREFIX}/{backup.source}/{PREFIX}-{backup.source}-")
    assert backup.key.endswith("y.zip.age") and backup.body.startswith(b"age-encryption.org/v1\n")
    meta = s3_client(s3_server).head_object(Bucket=backup.bucket, Key=backup.key)["Metadata"]
    assert meta["encryption"] == "age" and meta[integrity.METADATA_KEY] == integrity.METADATA_VALUE
    assert pending_uploads(s3_server, backup.bucket) == []

    (tmp_path / "backup.zip.age").write_bytes(backup.body)
    archive = tmp_path / "backup.zip"
    run(tool("age"), "-d", "-i", age_keys["x25519"].identity, "-o", archive, tmp_path / "backup.zip.age")
    via_ssh = run(tool("age"), "-d", "-i", age_keys["ssh-ed25519"].identity, tmp_path / "backup.zip.age")
    assert via_ssh == archive.read_bytes()
    seven = subprocess.run(["7z", "t", str(archive)], capture_output=True, text=True, check=False)
    assert seven.returncode == 0 and "Everything is Ok" in seven.stdout, seven.stdout + seven.stderr
    sql = run("bsdtar", "-xOf", archive)
    assert keys.member_name(backup.key) in run("bsdtar", "-tf", archive).decode()

    target = unique("dst_agecli")
    pg.create_database(target)
    try:
        done = subprocess.run([str(pg.bindir / "psql"), "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1",
                               "-d", target], input=sql, capture_output=True, env=pg.env(), check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert dump_sql(pg, target) == dump_sql(pg, backup.source)
    finally:
        pg.drop_database(target)


@pytest.mark.parametrize("kind", ["x25519", "passphrase", "ssh-ed25519"])
def test_pgbkp_restore_reads_it(kind: str, pg: PgCluster, backup: Backup, age_keys: dict[str, Key]) -> None:
    key = age_keys[kind]
    env = restore_env(backup, key.identity, PASSPHRASE if kind == "passphrase" else None)
    target = unique("dst_age")
    try:
        out = run_cli(["restore", "-c", PREFIX, "-d", backup.source, "--target-url", pg.url(target), "--create"], env)
        assert out.returncode == 0, out.stderr
        assert "checked: age authentication (every 64 KiB chunk), ZIP CRC-32, object SHA-256 (integrity record)" \
            in out.stdout
        assert dump_sql(pg, target) == dump_sql(pg, backup.source)
        secret = key.identity.read_bytes().decode(errors="replace")
        for text in (out.stdout, out.stderr):
            assert PASSPHRASE not in text and "AGE-SECRET-KEY" not in text and secret[40:80] not in text
    finally:
        pg.drop_database(target)


def test_list_and_verify_see_the_age_backup(pg: PgCluster, backup: Backup, age_keys: dict[str, Key]) -> None:
    env = restore_env(backup, age_keys["passphrase"].identity, PASSPHRASE)
    listed = run_cli(["list", "-d", backup.source], env)
    assert listed.returncode == 0, listed.stderr
    [row] = [ln for ln in listed.stdout.splitlines() if backup.key in ln]
    assert row.split()[-2:] == ["zip.age", f"s3://{backup.bucket}/{backup.key}"]
    verified = run_cli(["verify", "-d", backup.source, "--json"], env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    [result] = json.loads(verified.stdout)["results"]
    assert (result["status"], result["key"], result["tables"], result["rows"]) == ("ok", backup.key, 7, 15412)
    assert PASSPHRASE not in verified.stdout + verified.stderr


# rejections: each leaves the target exactly as it was


def marked_target(pg: PgCluster) -> str:
    target = unique("dst_agemark")
    pg.create_database(target)
    pg.psql("CREATE TABLE marker (v int); INSERT INTO marker VALUES (7)", target)
    return target


def header_length(body: bytes) -> int:
    mac_line = body.index(b"\n---") + 1
    return body.index(b"\n", mac_line) + 1


def store_copy(s3: S3Server, b: Backup, body: bytes, tag: str) -> str:
    key = b.key.removesuffix(".zip.age") + f"-{tag}.zip.age"  # not one of our names: only --key reaches it
    s3_client(s3).put_object(Bucket=b.bucket, Key=key, Body=body)
    return key


def damaged(body: bytes, how: str) -> bytes:
    data = bytearray(body)
    if how == "header":  # another base64 letter in the header MAC (a flipped bit could leave base64)
        at = header_length(body) - 5
        data[at] = ord("B") if data[at] == ord("A") else ord("A")
    elif how == "payload":
        data[len(data) // 2] ^= 0x01
    elif how == "truncated":
        del data[len(data) - 1000:]
    return bytes(data)


@pytest.mark.parametrize("how", ["wrong identity", "header", "payload", "truncated"])
def test_damage_and_wrong_identity_are_refused_and_the_target_is_untouched(
        how: str, pg: PgCluster, s3_server: S3Server, backup: Backup, age_keys: dict[str, Key]) -> None:
    identity = age_keys["stranger" if how == "wrong identity" else "x25519"].identity
    env = restore_env(backup, identity)
    key = backup.key if how == "wrong identity" else store_copy(s3_server, backup, damaged(backup.body, how), how)
    cfg = config_mod.load(env)
    store = s3_store(cfg)
    ref = restore.select_backup(cfg, PREFIX, key=f"s3://{backup.bucket}/{key}", storage=store)
    target = marked_target(pg)
    expected = {
        "wrong identity": (restore.IdentityError, "no identity matches"),
        "header": (restore.IntegrityError, r"the age header is damaged \(Header MAC is invalid\)"),
        "payload": (restore.IntegrityError, r"payload chunk \d+ .* fails authentication"),
        "truncated": (restore.IntegrityError, r"payload chunk \d+ .* fails authentication"),
    }[how]
    try:
        with pytest.raises(expected[0], match=expected[1] + ".*nothing was committed") as err:
            restore.restore(cfg, PREFIX, ref, pg.url(target), force=True, storage=store)
        assert user_objects(pg, target) == "public.marker" and pg.psql("SELECT v FROM marker", target) == "7"
        assert pg.password not in str(err.value)
        # with --create, the header's refusal comes before the database is made: nothing reached the server
        created = unique("dst_agenew")
        out = run_cli(["restore", "--key", f"s3://{backup.bucket}/{key}", "--target-url", pg.url(created),
                       "--create"], env)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith("pgbkp: error:")]
        assert len(errors) == 1 and "nothing was committed" in errors[0], out.stderr
        assert created not in pg.databases()
    finally:
        pg.drop_database(target)


AGE_CHUNK = 64 * 1024 + 16  # a payload chunk on the wire: 64 KiB of plaintext and its 16-byte tag


@pytest.mark.parametrize("how", ["chunk boundary", "shell command"])
def test_hostile_objects_are_refused_and_the_target_is_untouched(
        how: str, pg: PgCluster, s3_server: S3Server, backup: Backup, age_keys: dict[str, Key],
        tmp_path: Path) -> None:
    """The object cut on a chunk boundary (age sees the cut only by the missing last-chunk flag, after two
    chunks of SQL went to psql), and a genuine age file whose ZIP carries ``\\!``: age proves only that
    it was written to our recipients, so the guard against psql meta-commands must still hold behind it.
    (Trailing bytes and an empty object: tests/test_agecrypt.py, on the reader.)"""
    identity = age_keys["x25519"].identity
    marker = tmp_path / "pwned"
    if how == "shell command":
        plain = age_decrypt(backup.body, identity)
        sql = b"".join(iter_member(io.BytesIO(plain)))
        body = seal(sql.replace(b"\nSET ", f"\n\\! touch {marker}\nSET ".encode(), 1), age_keys["x25519"].recipient,
                    keys.member_name(backup.key))
    else:
        start = header_length(backup.body) + 16  # the payload nonce, then the chunks
        assert len(backup.body) > start + 3 * AGE_CHUNK
        body = backup.body[:start + 2 * AGE_CHUNK]
    key = store_copy(s3_server, backup, body, how.replace(" ", "-"))
    env = restore_env(backup, identity)
    cfg = config_mod.load(env)
    store = s3_store(cfg)
    ref = restore.select_backup(cfg, PREFIX, key=f"s3://{backup.bucket}/{key}", storage=store)
    target = marked_target(pg)
    expected = {
        "chunk boundary": (restore.IntegrityError, r"ends after 131072 bytes of plaintext without age's final chunk"),
        "shell command": (restore.RestoreError, r"the backup contains a psql meta-command \(line 10: .! touch "),
    }[how]
    try:
        with pytest.raises(expected[0], match=expected[1] + ".*nothing was committed") as err:
            restore.restore(cfg, PREFIX, ref, pg.url(target), force=True, storage=store)
        assert "\n" not in str(err.value)
        assert user_objects(pg, target) == "public.marker" and pg.psql("SELECT v FROM marker", target) == "7"
        assert not marker.exists()
    finally:
        pg.drop_database(target)


def age_decrypt(body: bytes, identity: Path) -> bytes:
    reader = AgeReader(io.BytesIO(body), read_identity_file(identity))
    return b"".join(iter(lambda: reader.read(1 << 20), b""))


def seal(sql: bytes, recipient: str, member: str) -> bytes:
    """``sql`` as our backups hold it: a ZIP (with its integrity record) encrypted as one age file."""
    out = io.BytesIO()
    outer = AgeWriter(out, parse_recipients(recipient))
    with ZipStreamWriter(outer, member, level=6, threads=1) as writer:
        writer.write(sql)
        writer.close()
    outer.close()
    return out.getvalue()


def test_a_missing_identity_is_one_line_with_the_fix(pg: PgCluster, backup: Backup, age_keys: dict[str, Key],
                                                     tmp_path: Path) -> None:
    env = {k: v for k, v in backup.env.items() if k != "AGE_RECIPIENTS"}
    target = unique("dst_noid")
    out = run_cli(["restore", "-d", backup.source, "--target-url", pg.url(target), "--create"], env)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1] == (
        f"pgbkp: error: restore s3://{backup.bucket}/{backup.key}: the backup is encrypted with age (.zip.age), and "
        "AGE_IDENTITY_FILE is not set; nothing was read or sent. Fix: set AGE_IDENTITY_FILE to the identity of one "
        "of its recipients (the age-keygen key file, or the SSH private key), kept where you restore, never where "
        "backups are made.")
    assert target not in pg.databases()

    wrong = run_cli(["restore", "-d", backup.source, "--target-url", pg.url(target), "--create"],
                    restore_env(backup, age_keys["passphrase"].identity, "not the passphrase at all"))
    assert wrong.returncode == 1 and "the passphrase does not open this identity file" in wrong.stderr
    assert "not the passphrase at all" not in wrong.stderr and PASSPHRASE not in wrong.stderr
    missing = tmp_path / "gone.txt"
    gone = run_cli(["restore", "-d", backup.source, "--target-url", pg.url(target), "--create"],
                   restore_env(backup, missing))
    assert gone.returncode == 1 and f"read identity file {missing}: No such file or directory. Fix:" in gone.stderr
    assert target not in pg.databases()
