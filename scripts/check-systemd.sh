#!/usr/bin/env bash
# Checks systemd/dingdong.service: `systemd-analyze verify` clean, and an exposure of at most
# 1.5 in `systemd-analyze security --offline=yes`. verify needs ExecStart's binary to exist,
# so it checks a copy whose ExecStart points at the binary cargo built (built here if absent).
set -euo pipefail
cd "$(dirname "$0")/.."

unit=systemd/dingdong.service
max_exposure=1.5

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "check-systemd: systemd-analyze is not installed (Debian package: systemd)" >&2
  exit 2
fi

bin="${DINGDONG_BIN:-$PWD/target/debug/dingdong}"
[ -x "$bin" ] || cargo build --locked --quiet --bin dingdong

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#^ExecStart=/usr/bin/dingdong #ExecStart=$bin #" "$unit" >"$tmp/dingdong.service"
verify_out=$(systemd-analyze verify "$tmp/dingdong.service" 2>&1) || { echo "$verify_out" >&2; echo "check-systemd: verify failed" >&2; exit 1; }
if [ -n "$verify_out" ]; then
  echo "$verify_out" >&2
  echo "check-systemd: verify is not clean" >&2
  exit 1
fi

exposure=$(systemd-analyze security --offline=yes "$unit" 2>/dev/null \
  | sed -n 's/.*Overall exposure level for dingdong.service: \([0-9.]*\).*/\1/p')
if [ -z "$exposure" ]; then
  echo "check-systemd: could not read the exposure level" >&2
  exit 1
fi
if awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e > m) }'; then
  echo "check-systemd: exposure $exposure is above $max_exposure" >&2
  systemd-analyze security --offline=yes "$unit" | grep '✗' >&2 || true
  exit 1
fi
echo "check-systemd: verify clean, exposure $exposure (<= $max_exposure)"
