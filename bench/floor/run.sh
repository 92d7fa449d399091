#!/usr/bin/env bash
# The floor under the production path: PostgreSQL alone, given the whole machine, doing only the
# writes and reads Spean makes for each referral (floor.sql, 16 referrals per pgbench
# transaction). Referrals per second = pgbench's tps x 16. See docs/performance.md.
#
#   bench/floor/run.sh [seconds] [clients...]      default: 30 s, 4 8 16 clients
#
# FLOOR_OPTS adds pgbench options: FLOOR_OPTS="-D outbox=0" leaves the outbox out (see the
# switches at the top of floor.sql). FLOOR_EXTRA_SQL names SQL files run after the migrations
# (to drop an index, say). FLOOR_SQL runs another script instead of floor.sql.
# Needs pgbench and psql on the PATH and a PostgreSQL at $PGURL (default: the benchmark's).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
migrations="$here/../../broker/migrations/postgres"
url=${PGURL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
db=spean_floor_$$
secs=${1:-30}
shift || true
clients=("${@:-4 8 16}")
# shellcheck disable=SC2206
clients=(${clients[*]})

psql -q "$url" -c "CREATE DATABASE $db"
trap 'psql -q "$url" -c "DROP DATABASE IF EXISTS $db" >/dev/null' EXIT
dburl=${url/\/postgres\?/\/$db?}
for m in "$migrations"/*.sql ${FLOOR_EXTRA_SQL:-}; do psql -q -v ON_ERROR_STOP=1 "$dburl" -f "$m"; done

for c in "${clients[@]}"; do
  out=$(pgbench -n -M prepared -c "$c" -j 2 -T "$secs" \
    -D outbox=1 -D carry=1 -D access=1 -D snapshot=1 -D lease=1 ${FLOOR_OPTS:-} -f "${FLOOR_SQL:-$here/floor.sql}" "$dburl" 2>&1)
  tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")
  lat=$(sed -n 's/^latency average = \(.*\)$/\1/p' <<<"$out")
  echo "clients $c: $tps tps x 16 = $(awk -v t="$tps" 'BEGIN { printf "%.0f", t * 16 }') referrals/s (latency average $lat per 16)"
done
# What the runs left: every referral delivered with its two events, the outbox empty.
psql -At "$dburl" -c "SELECT 'referrals ' || count(*) || ', delivered ' || count(*) FILTER (WHERE state = 'delivered') || ', events ' || (SELECT count(*) FROM referral_events) || ', access ' || (SELECT count(*) FROM referral_access) || ', outbox ' || (SELECT count(*) FROM mailbox) FROM referrals"
