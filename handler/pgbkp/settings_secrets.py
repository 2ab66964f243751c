"""PG_URLS, ZIP_PASSWORD, NOTIFY_URLS and the age settings from Secrets Manager or SSM, for the Lambda edge.

``PG_URLS_SECRET_ID`` / ``ZIP_PASSWORD_SECRET_ID`` / ``NOTIFY_URLS_SECRET_ID`` name where the value lives,
so that it need not sit in the function's plain environment (visible to anyone who can read its configuration):

* ``arn:aws:secretsmanager:...`` or a plain name (``pgbkp/pg-urls``): a Secrets Manager secret;
* ``arn:aws:ssm:...``, ``/path/name`` or ``ssm:name``: an SSM parameter, decrypted (SecureString).

A secret stored as a JSON object may hold the value under the variable's own name
(``{"PG_URLS": "..."}``). Values are fetched through Powertools parameters and cached for
``SECRETS_MAX_AGE_SECONDS`` (300), so warm invocations do not call AWS again. Plain ``PG_URLS`` and
``ZIP_PASSWORD`` still work; setting both forms of one is a configuration error.

``AGE_RECIPIENTS_SECRET_ID`` reads the age recipients (public keys: a secret only so that one place holds the
list). ``AGE_IDENTITY_SECRET_ID`` reads an identity into ``AGE_IDENTITY``, for a *verify* function only: the
backup function must never be given it, nor the permission to read it (docs/age.md, "Lambda").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pgbkp.config import ConfigError, setting, unwrap_secret
from pgbkp.redact import register

SECRET_VARIABLES = ("PG_URLS", "ZIP_PASSWORD", "AGE_RECIPIENTS", "AGE_IDENTITY", "NOTIFY_URLS")
DEFAULT_MAX_AGE = 300

#: (store, id, max_age) -> value. ``store`` is "secretsmanager" or "ssm".
Fetcher = Callable[[str, str, int], str]


def locate(secret_id: str) -> tuple[str, str]:
    """Which store holds ``secret_id``, and the id to ask it for."""
    sid = secret_id.strip()
    if sid.startswith("arn:") and sid.split(":")[2:3] == ["ssm"]:
        return "ssm", sid
    if sid.startswith("ssm:"):
        return "ssm", sid[len("ssm:"):]
    if sid.startswith("/"):
        return "ssm", sid
    return "secretsmanager", sid


def powertools_fetch(store: str, secret_id: str, max_age: int) -> str:
    """Fetch with Powertools parameters (its cache honours ``max_age``)."""
    from aws_lambda_powertools.utilities import parameters

    if store == "ssm":
        value = parameters.get_parameter(secret_id, decrypt=True, max_age=max_age)
    else:
        value = parameters.get_secret(secret_id, max_age=max_age)
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return str(value)


def resolve(env: Mapping[str, str], fetch: Fetcher | None = None) -> dict[str, str]:
    """``env`` with each ``<NAME>_SECRET_ID`` replaced by the ``<NAME>`` value it points to."""
    out = dict(env)
    fetch = fetch or powertools_fetch
    max_age = int(setting(env, "SECRETS_MAX_AGE_SECONDS"))
    for name in SECRET_VARIABLES:
        secret_id = env.get(f"{name}_SECRET_ID", "").strip()
        if not secret_id:
            continue
        if env.get(name, "").strip():
            raise ConfigError(f"{name} and {name}_SECRET_ID are both set. Fix: keep one of them.")
        store, sid = locate(secret_id)
        where = "SSM parameter" if store == "ssm" else "Secrets Manager secret"
        try:
            value = fetch(store, sid, max_age)
        except Exception as exc:
            # The SDK's message names the id and the refusal; never the value, which we do not have. Off AWS
            # (docker run of the image) the usual cause is no region or no credentials at all.
            reason = f"{type(exc).__name__}: {str(exc).rstrip('.')}"
            raise ConfigError(f"{name}_SECRET_ID: read {where} {sid!r}: {reason}. Fix: check the id, its region, "
                              "and that the function's role may read it; outside Lambda, pass AWS_DEFAULT_REGION "
                              "and AWS credentials to the container (docker run -e).") from None
        value = _unwrap(name, value)
        if not value.strip():
            raise ConfigError(f"{name}_SECRET_ID: {where} {sid!r} is empty. Fix: store the value in it.")
        register(value)
        out[name] = value
    return out


def _unwrap(name: str, value: str) -> str:
    """A JSON object secret (the console's key/value form) holds the value under the variable's name."""
    return unwrap_secret(name, value, what=f"{name}_SECRET_ID")
