#!/bin/bash
# As MinIO's image: arguments that do not start with `minio` are minio's.
set -euo pipefail
if [ "${1:-}" != minio ]; then set -- minio "$@"; fi
exec "$@"
