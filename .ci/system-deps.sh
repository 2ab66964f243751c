#!/usr/bin/env bash
# System packages the tests and the demo need. Installs them with apt when root, else says what is missing.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have 7z       || need+=(p7zip-full)
have bsdtar   || need+=(libarchive-tools)
have unzip    || need+=(unzip)
have openssl  || need+=(openssl)
have age      || need+=(age)
have ssh-keygen || need+=(openssh-client)
have runuser  || need+=(util-linux)
have docker-compose || need+=(docker-compose)
have shellcheck || need+=(shellcheck)
# tests/test_statuspage_browser.py loads the runner's status page in headless Chromium.
{ have chromium || have chromium-browser; } || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql postgresql-client)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -eq 0 ] && have apt-get; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts a default cluster on install; the tests run their own throwaway clusters.
  if have pg_lsclusters; then pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
    pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true; done; fi
else
  echo "missing system packages: ${need[*]}" >&2
  echo "install them (e.g. sudo apt-get install ${need[*]}) and run again" >&2
  exit 1
fi
