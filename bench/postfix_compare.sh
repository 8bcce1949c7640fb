#!/usr/bin/env bash
# Builds the release binary and runs MaiRust next to a private Postfix (bench/postfix_compare.py).
# Needs root and Debian's postfix package (postfix, smtp-source, smtp-sink); the postgres-s3
# variants need PostgreSQL server binaries and s3s-fs, as scripts/test does.
#   bench/postfix_compare.sh [--rounds N] [--messages N] [--cases C,...] [--variants V,...]
#   cases: accept-2k, accept-64k, accept-1m, relay, latency, idle (default: all)
#   variants: sqlite-fs, sqlite-fs+key, postgres-s3, postgres-s3+key (default: all)
#   quick: bench/postfix_compare.sh --messages 500 --rounds 2 --cases accept-2k --variants sqlite-fs
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin mairust
MAIRUST_BIN="$PWD/target/release/mairust" python3 bench/postfix_compare.py "$@"
