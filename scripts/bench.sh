#!/usr/bin/env bash
# Runs dingdong's benchmarks (release build) and prints one line per figure plus a summary
# table. Installs what they need and the machine lacks: mosquitto, and h2load (Debian
# nghttp2-client) for the machine's practical HTTP/2 limit.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo bench --locked --bench bench
