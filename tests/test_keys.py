"""Object keys and file names: the original's layout, reversible encoding, strict parsing."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbkp import keys

WHEN = datetime(2025, 9, 8, 9, 9)


def test_readme_example_exactly() -> None:
    key = keys.object_key("", "myprefix", "mydb", WHEN, "myprefix")
    assert f"s3://mybucket/{key}" == "s3://mybucket/myprefix/mydb/myprefix-mydb-09h-09m-08d-09mes-2025y.zip"


def test_filename_format_without_prefix() -> None:
    assert keys.filename("mydb", datetime(2025, 12, 31, 23, 5)) == "mydb-23h-05m-31d-12mes-2025y.zip"
    assert keys.filename("mydb", datetime(2025, 1, 2, 0, 0), None) == "mydb-00h-00m-02d-01mes-2025y.zip"
    assert keys.filename("mydb", datetime(2025, 1, 2, 0, 0), "") == "mydb-00h-00m-02d-01mes-2025y.zip"


def test_key_without_prefix_uses_host_as_base_dir() -> None:
    assert keys.object_key("", "db.example.com", "shop", WHEN, None) == (
        "db.example.com/shop/shop-09h-09m-08d-09mes-2025y.zip")
    assert keys.object_key("", "db:5433", "shop", WHEN, None) == "db:5433/shop/shop-09h-09m-08d-09mes-2025y.zip"


@pytest.mark.parametrize(("global_prefix", "expected"), [
    ("backups", "backups/p/shop/p-shop-09h-09m-08d-09mes-2025y.zip"),
    ("/team/pg/", "team/pg/p/shop/p-shop-09h-09m-08d-09mes-2025y.zip"),
    ("", "p/shop/p-shop-09h-09m-08d-09mes-2025y.zip"),
])
def test_global_prefix_is_prepended(global_prefix: str, expected: str) -> None:
    assert keys.object_key(global_prefix, "p", "shop", WHEN, "p") == expected
    assert keys.folder(global_prefix, "p", "shop") == expected.rsplit("/", 1)[0] + "/"


def test_member_name() -> None:
    assert keys.member_name("g/p/shop/p-shop-09h-09m-08d-09mes-2025y.zip") == "p-shop-09h-09m-08d-09mes-2025y.sql"


@pytest.mark.parametrize(("name", "encoded"), [
    ("plain", "plain"),
    ("a/b", "a%2Fb"),
    ("100%", "100%25"),
    ("%2F", "%252F"),
    ("/%/", "%2F%25%2F"),
    ("é 日本 🐘", "é 日本 🐘"),
    (".", "%2E"),
    ("..", "%2E%2E"),
    ("...", "..."),
    ("a.b", "a.b"),
])
def test_encoding(name: str, encoded: str) -> None:
    assert keys.encode_name(name) == encoded
    assert keys.decode_name(encoded) == name
    assert "/" not in encoded


def test_slash_in_database_name_adds_no_path_segment() -> None:
    key = keys.object_key("g", "p", "sales/2025", WHEN, "p")
    assert key == "g/p/sales%2F2025/p-sales%2F2025-09h-09m-08d-09mes-2025y.zip"
    assert key.count("/") == 3
    assert keys.decode_name(key.split("/")[2]) == "sales/2025"


@given(st.text(min_size=1, max_size=40))
def test_encoding_round_trip_any_text(name: str) -> None:
    encoded = keys.encode_name(name)
    assert "/" not in encoded and encoded not in (".", "..")
    assert keys.decode_name(encoded) == name


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_encoding_is_injective(a: str, b: str) -> None:
    if a != b:
        assert keys.encode_name(a) != keys.encode_name(b)


@given(st.text(min_size=1, max_size=30), st.datetimes(min_value=datetime(1000, 1, 1)),
       st.one_of(st.none(), st.text(alphabet="abcxyz-_.", min_size=1, max_size=10)))
def test_parse_filename_round_trip(db: str, when: datetime, prefix: str | None) -> None:
    when = when.replace(second=0, microsecond=0)
    assert keys.parse_filename(keys.filename(db, when, prefix), db, prefix) == when


@pytest.mark.parametrize(("name", "db", "prefix"), [
    ("shopping-09h-09m-08d-09mes-2025y.zip", "shop", None),  # another database sharing a start
    ("shop-eu-09h-09m-08d-09mes-2025y.zip", "shop", None),
    ("p-shopping-09h-09m-08d-09mes-2025y.zip", "shop", "p"),
    ("q-shop-09h-09m-08d-09mes-2025y.zip", "shop", "p"),  # another prefix
    ("shop-09h-09m-08d-09mes-2025y.zip", "shop", "p"),  # missing prefix
    ("p-shop-09h-09m-08d-09mes-2025y.zip", "shop", None),  # unexpected prefix
    ("notes.txt", "shop", None),
    ("shop-09h-09m-08d-09mes-2025y.zip.bak", "shop", None),
    ("shop-09h-09m-08d-09mes-2025y.ZIP", "shop", None),
    ("shop-09h-09m-08d-09mes-2025y.sql", "shop", None),
    ("old/shop-09h-09m-08d-09mes-2025y.zip", "shop", None),
    ("shop-9h-09m-08d-09mes-2025y.zip", "shop", None),  # one digit
    ("shop-09h-09m-31d-02mes-2025y.zip", "shop", None),  # 31st of February
    ("shop-09h-09m-29d-02mes-2025y.zip", "shop", None),  # not a leap year
    ("shop-24h-00m-01d-01mes-2025y.zip", "shop", None),
    ("shop-09h-60m-01d-01mes-2025y.zip", "shop", None),
    ("shop-09h-09m-00d-09mes-2025y.zip", "shop", None),
    ("shop-09h-09m-08d-13mes-2025y.zip", "shop", None),
    ("shop-٠٩h-09m-08d-09mes-2025y.zip", "shop", None),  # Arabic-Indic digits
    ("shop-09h-09m-08d-09mes-2025y-copy.zip", "shop", None),
    ("a.b-09h-09m-08d-09mes-2025y.zip", "a/b", None),  # the / is encoded, not dropped
    ("a/b-09h-09m-08d-09mes-2025y.zip", "a/b", None),
    ("s.op-09h-09m-08d-09mes-2025y.zip", "s*op", None),  # regex characters are literal
])
def test_parse_filename_rejects_look_alikes(name: str, db: str, prefix: str | None) -> None:
    assert keys.parse_filename(name, db, prefix) is None


def test_parse_filename_accepts_ours() -> None:
    assert keys.parse_filename("shop-09h-09m-29d-02mes-2024y.zip", "shop", None) == datetime(2024, 2, 29, 9, 9)
    assert keys.parse_filename("p-a%2Fb-23h-59m-31d-12mes-2025y.zip", "a/b", "p") == datetime(2025, 12, 31, 23, 59)


def test_parse_key_is_the_shared_rule_for_our_backups() -> None:
    when = datetime(2026, 11, 20, 3, 5)
    key = keys.object_key("nightly", "main", "a/b%", when, "main")
    assert keys.parse_key(key, "nightly", "main", "main") == ("a/b%", when)
    assert keys.parse_key(key, "", "main", "main") is None  # another GLOBAL_PREFIX
    assert keys.parse_key(key, "nightly", "main", "other") is None  # another prefix
    folder = keys.folder("nightly", "main", "shop")
    assert keys.parse_key(folder + "sub/" + keys.filename("shop", when, "main"), "nightly", "main", "main") is None
    assert keys.parse_key(folder + "notes.txt", "nightly", "main", "main") is None
    lowercase = "nightly/main/a%2fb/" + keys.filename("a/b", when, "main")  # not our canonical encoding
    assert keys.parse_key(lowercase, "nightly", "main", "main") is None
