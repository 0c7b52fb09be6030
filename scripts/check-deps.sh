#!/usr/bin/env bash
# Checks what dingdong links (deny.toml): no OpenSSL or aws-lc, permissive licenses only,
# crates.io only. Offline checks only; `cargo deny check advisories` needs GitHub.
# Skips, saying so, where cargo-deny is not installed (cargo install --locked cargo-deny).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "check-deps: SKIP: cargo-deny is not installed (cargo install --locked cargo-deny)"
  exit 0
fi
cargo deny --log-level error check bans licenses sources
echo "check-deps: bans, licenses and sources ok"
