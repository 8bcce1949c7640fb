#!/usr/bin/env bash
# Builds the release binary and runs the SMTP acceptance benchmark.
#   bench/smtp_accept.sh [--messages N] [--concurrency M] [--size BYTES] [--variants V,...]
#   variants: sqlite-fs (default), sqlite-fs+key, postgres-s3, postgres-s3+key (the last two
#   need PostgreSQL server binaries and s3s-fs, as scripts/test does)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin mairust
MAIRUST_BIN="$PWD/target/release/mairust" python3 bench/smtp_accept.py "$@"
