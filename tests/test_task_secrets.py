"""A secret the Fargate task (or a Kubernetes pod) gets whole from its platform reads as the Lambda function
reads it from Secrets Manager: the JSON key/value form ``{"PG_URLS": "..."}`` is unwrapped by every edge.

ECS's ``Secrets`` (template.yaml, BackupTaskDefinition) puts the secret's whole string into PG_URLS and
ZIP_PASSWORD. Without the unwrap, a secret the function accepts made the task exit 2 on PG_URLS, and,
worse, encrypt its archive with the JSON text as the ZIP password, which nobody would think to type.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import pyzipper

from pgbkp import config, handler_core
from pgbkp.config import ConfigError
from pgbkp.storage.memory import MemoryStorage
from tests.fakes import FakeDatabase, FakeDumpSource

URL = "main|postgres://u:pg-secret-in-json@db.invalid/postgres"
PASSWORD = "the-real-zip-password"
BASE = {"S3_BUCKET": "bkt", "TIMEZONE": "UTC", "COMPRESSION_THREADS": "1"}


def test_pg_urls_in_the_json_form_is_the_url_inside() -> None:
    loaded = config.load({**BASE, "PG_URLS": json.dumps({"PG_URLS": URL})}, log_warnings=False)
    assert [(c.name, c.pg.host) for c in loaded.connections] == [("main", "db.invalid")]


def test_zip_password_in_the_json_form_is_the_password_inside() -> None:
    loaded = config.load({**BASE, "PG_URLS": URL, "ZIP_PASSWORD": json.dumps({"ZIP_PASSWORD": PASSWORD})},
                         log_warnings=False)
    assert loaded.zip_password is not None and loaded.zip_password.reveal() == PASSWORD


@pytest.mark.parametrize("password", ['{"password": "x-123456789012"}', "{not json at all}", '["a", "b"]',
                                      " plain with spaces "])
def test_any_other_password_is_kept_exactly(password: str) -> None:
    loaded = config.load({**BASE, "PG_URLS": URL, "ZIP_PASSWORD": password}, log_warnings=False)
    assert loaded.zip_password is not None and loaded.zip_password.reveal() == password


def test_pg_urls_as_a_json_object_without_its_key_is_one_clear_error_without_the_secret() -> None:
    with pytest.raises(ConfigError) as exc:
        config.load({**BASE, "PG_URLS": json.dumps({"urls": URL})}, log_warnings=False)
    assert str(exc.value) == ("PG_URLS: the secret is a JSON object without a string 'PG_URLS' key. "
                              'Fix: store the plain value, or {"PG_URLS": "..."}.')


def test_the_task_backs_up_with_the_unwrapped_secrets() -> None:
    """The Fargate task's own path (no Lambda context), with both secrets as ECS injects them."""
    env = {**BASE, "PG_URLS": json.dumps({"PG_URLS": URL}), "ZIP_PASSWORD": json.dumps({"ZIP_PASSWORD": PASSWORD})}
    store = MemoryStorage(["bkt"])
    source = FakeDumpSource({"main": [FakeDatabase("warehouse", b"-- warehouse\n", 1)]})
    request = handler_core.Request(connections=("main",), databases=("warehouse",))
    summary: dict[str, Any] = handler_core.handle(
        request, None, config=config.load(env, log_warnings=False),
        edge=handler_core.Edge(storage_for=lambda conn: store, source=source))
    [result] = summary["results"]
    assert (result["connection"], result["database"], result["status"]) == ("main", "warehouse", "ok")
    data = store.objects["bkt"][result["key"]][0]
    with pyzipper.AESZipFile(io.BytesIO(data)) as archive:
        [member] = archive.namelist()
        archive.setpassword(PASSWORD.encode())
        assert archive.read(member) == b"-- warehouse\n"
