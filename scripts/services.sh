#!/usr/bin/env bash
# Throwaway PostgreSQL and S3-compatible server (s3s-fs) on loopback for the test suite.
#   scripts/services.sh start DIR   starts both under DIR and writes DIR/env (export lines)
#   scripts/services.sh stop DIR    stops them
set -euo pipefail

cmd=${1:?usage: services.sh start|stop DIR}
dir=${2:?usage: services.sh start|stop DIR}

pg_bin() {
  local d
  for d in /usr/local/bin /usr/lib/postgresql/*/bin; do
    if [ -x "$d/$1" ]; then echo "$d/$1"; return; fi
  done
  command -v "$1"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# PostgreSQL refuses to run as root: use the postgres account then.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home postgres
  fi
  mkdir -p "$dir/s3"
  # The postgres account must reach its directory, which DIR's parents may not allow.
  pg_dir=$(mktemp -d /tmp/mairust-pg.XXXXXX)
  chmod 755 "$pg_dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$pg_dir"; fi
  echo "$pg_dir" >"$dir/pg_dir"
  pg_port=$(free_port)
  as_pg "$(pg_bin initdb)" -D "$pg_dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1
  as_pg "$(pg_bin pg_ctl)" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w \
    -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
  s3_port=$(free_port)
  s3s-fs --host 127.0.0.1 --port "$s3_port" --access-key mairust-test \
    --secret-key mairust-test-secret "$dir/s3" >"$dir/s3s.log" 2>&1 &
  echo $! >"$dir/s3s.pid"
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  cat >"$dir/env" <<ENV
export MAIRUST_TEST_PG_URL=postgres://postgres@127.0.0.1:$pg_port
export MAIRUST_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export MAIRUST_TEST_S3_ROOT=$dir/s3
export MAIRUST_TEST_S3_ACCESS_KEY=mairust-test
export MAIRUST_TEST_S3_SECRET_KEY=mairust-test-secret
export MAIRUST_TEST_S3_PID=$(cat "$dir/s3s.pid")
export MAIRUST_TEST_PG_DIR=$pg_dir
ENV
  echo "PostgreSQL on 127.0.0.1:$pg_port, s3s-fs on 127.0.0.1:$s3_port ($dir/env)"
  ;;
stop)
  if [ -f "$dir/s3s.pid" ]; then kill "$(cat "$dir/s3s.pid")" 2>/dev/null || true; fi
  if [ -f "$dir/pg_dir" ]; then
    pg_dir=$(cat "$dir/pg_dir")
    as_pg "$(pg_bin pg_ctl)" -D "$pg_dir/data" -m fast stop >/dev/null || true
    rm -rf "$pg_dir"
  fi
  ;;
*)
  echo "usage: services.sh start|stop DIR" >&2
  exit 2
  ;;
esac
