#!/usr/bin/env bash
# Create (or update) codeswitch's JetStream streams, KV buckets and object store on an
# operator-managed NATS. Idempotent: safe to run on every deploy.
#
# The definitions live in one place, runtime/bus.py; this script applies exactly those
# (the same code the gateway runs on start), so the two can never drift apart.
#
#   NATS_URL=nats://nats.internal:4222 deploy/nats/init-streams.sh
#   deploy/nats/init-streams.sh nats://user:pass@nats.internal:4222
#   CODESWITCH_REPLICAS=3 deploy/nats/init-streams.sh nats://n1:4222,nats://n2:4222,nats://n3:4222
#
# A cluster: a comma-separated list of its servers (any one answering will do), and
# CODESWITCH_REPLICAS copies of every stream and bucket (raised on existing ones, never
# lowered). Credentials: a user:pass@ URL, or CODESWITCH_NATS_CREDS=/path/user.creds; TLS:
# tls:// URLs.
#
# Retention of the event log: CODESWITCH_EVENTS_MAX_AGE (seconds) and
# CODESWITCH_EVENTS_MAX_BYTES (bytes); 0 or unset = keep everything.
set -euo pipefail

url="${1:-${NATS_URL:-nats://127.0.0.1:4222}}"

if command -v codeswitch >/dev/null 2>&1; then
  exec codeswitch nats init --nats-url "$url"
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-python3}"
if [ -x "$here/.venv/bin/python" ]; then
  python="$here/.venv/bin/python"
fi
cd "$here"
exec "$python" -m codeswitch nats init --nats-url "$url"
