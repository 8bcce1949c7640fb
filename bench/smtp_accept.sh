#!/usr/bin/env bash
# Builds the release binary and runs the SMTP acceptance benchmark.
#   bench/smtp_accept.sh [--messages N] [--concurrency M] [--size BYTES]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin mairust
MAIRUST_BIN="$PWD/target/release/mairust" python3 bench/smtp_accept.py "$@"
