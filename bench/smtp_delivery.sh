#!/usr/bin/env bash
# Builds the release binary and runs the end-to-end delivery benchmark (needs Debian's postfix
# package for smtp-sink and smtp-source).
#   bench/smtp_delivery.sh [--messages N] [--concurrency M] [--domains D] [--size BYTES]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin mairust
MAIRUST_BIN="$PWD/target/release/mairust" python3 bench/smtp_delivery.py "$@"
