#!/usr/bin/env bash
# Builds the release binary and runs MaiRust's IMAP next to a private Dovecot
# (bench/imap_compare.py). Needs root and Debian's dovecot-imapd.
#   bench/imap_compare.sh [--messages N] [--rounds N] [--idle-sessions N]
#   quick: bench/imap_compare.sh --messages 1000 --rounds 1 --idle-sessions 50
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin mairust
python3 bench/imap_compare.py --binary "$PWD/target/release/mairust" "$@"
