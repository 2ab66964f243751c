"""Issue 14, part A, in the configuration: RETENTION_KEEP_LAST and keep_last=, databases=, the exclude
fields and PG_DUMP_ARGS, parsed, checked and refused with one line that names the item and the field.

What they do to a real backup is in test_selection_backup.py (PgCluster, restored contents)."""

from __future__ import annotations

import re

import pytest

from pgbkp import config, pipeline
from pgbkp.config import ConfigError, load

URL = "postgres://user:pw@db.example.com:5432/postgres"


def one(pg_urls: str, **env: str) -> config.Connection:
    cfg = load({"S3_BUCKET": "global-bucket", **env, "PG_URLS": pg_urls})
    assert len(cfg.connections) == 1
    return cfg.connections[0]


def refused(pg_urls: str, message: str, **env: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"S3_BUCKET": "global-bucket", **env, "PG_URLS": pg_urls})
    assert str(info.value) == message


# --------------------------------------------------------------------------------------------------
# RETENTION_KEEP_LAST, keep_last=


def test_keep_last_defaults_to_one_and_reaches_the_policy() -> None:
    c = one(URL, RETENTION_DAYS="7")
    assert c.retention_keep_last == 1
    assert pipeline.policy_for(c) == pipeline.retention.Policy(days=7, keep_last=1)
    c = one(URL, RETENTION_DAYS="7", RETENTION_KEEP_LAST="5")
    assert pipeline.policy_for(c) == pipeline.retention.Policy(days=7, keep_last=5)


def test_keep_last_per_connection_overrides_the_global() -> None:
    cfg = load({"S3_BUCKET": "b-1", "RETENTION_DAYS": "3", "RETENTION_KEEP_LAST": "4",
                "PG_URLS": f"a|keep_last=9|{URL},b|retention_keep_last=2|postgres://u@h2/postgres,"
                           "c|postgres://u@h3/postgres"})
    assert [c.retention_keep_last for c in cfg.connections] == [9, 2, 4]


@pytest.mark.parametrize(("env", "pg_urls", "message"), [
    ({"RETENTION_KEEP_LAST": "0"}, URL,
     "RETENTION_KEEP_LAST: 0 is out of range. Fix: use a number from 1 to 100000."),
    ({"RETENTION_KEEP_LAST": "three"}, URL,
     "RETENTION_KEEP_LAST: 'three' is not a whole number. Fix: use a number such as 7."),
    ({}, f"a|keep_last=0|{URL}",
     "PG_URLS item 1 (a): field 'retention_keep_last': 0 is out of range. Fix: use a number from 1 to 100000."),
    ({}, f"a|keep_last=1|retention_keep_last=2|{URL}",
     "PG_URLS item 1 (a): field 'retention_keep_last' is given twice. Fix: keep only one."),
])
def test_keep_last_refused(env: dict[str, str], pg_urls: str, message: str) -> None:
    refused(pg_urls, message, **env)


def test_keep_last_is_no_typo() -> None:
    assert not any("RETENTION_KEEP_LAST" in w for w in load({"S3_BUCKET": "b-1", "PG_URLS": URL,
                                                              "RETENTION_KEEP_LAST": "3"}).warnings)
    assert [w for w in config.typo_warnings({"RETENTION_KEEP_LASTS": "3"}) if re.search("KEEP_LAST\\b", w)]
