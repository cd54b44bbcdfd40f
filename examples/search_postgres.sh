#!/usr/bin/env bash
# The hyper-parameter search on a PostgreSQL server: start a throw-away server (its own data folder
# and socket under a temporary directory, no TCP port), run `sws search run` with two worker
# processes on it, print the Pareto front, stop the server.  On a cluster, point every machine's
# `sws search run OUT --storage URL` at one real server instead (each machine its own OUT folder,
# holding a copy of the first one's search.json and pretrained.*).
#
#   bash examples/search_postgres.sh [OUT] [extra sws search run options]
#
# Needs the server binaries (Debian: apt-get install postgresql) and psycopg
# (pip install 'sws[postgres]').  As root the server runs as the `postgres` system user.
# Without a server, Optuna's journal file does the same on a shared filesystem:
#   sws search run OUT --storage journal:/shared/studies/sws.journal --n-workers 2 ...
set -euo pipefail
OUT=${1:-runs/search-postgres-$(date +%Y%m%d-%H%M%S)}   # a new folder: the server is thrown away
shift || true
SWS=${SWS:-$(dirname "$0")/../.venv/bin/sws}
BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$BIN/pg_ctl" ] || { echo "PostgreSQL server binaries not found (set PG_BIN)" >&2; exit 2; }
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi

TMP=$(mktemp -d /tmp/sws-pg-XXXXXX)
chmod 755 "$TMP"
mkdir "$TMP/sock"
[ ${#AS[@]} -gt 0 ] && chown postgres "$TMP" "$TMP/sock"
PORT=55432                                    # names the socket file only
stop() { (cd "$TMP" && "${AS[@]}" "$BIN/pg_ctl" -D "$TMP/data" -m fast -w stop >/dev/null 2>&1) || true; rm -rf "$TMP"; }
trap stop EXIT
(cd "$TMP" && "${AS[@]}" "$BIN/initdb" -D "$TMP/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null)
(cd "$TMP" && "${AS[@]}" "$BIN/pg_ctl" -D "$TMP/data" -l "$TMP/server.log" -w \
    -o "-p $PORT -k $TMP/sock -c listen_addresses=''" start >/dev/null)
URL="postgresql+psycopg://postgres@/postgres?host=$TMP/sock&port=$PORT"
echo "server up: $URL"

# a smoke-sized study (4 trials, 2 workers on one study, about 30 s): one epoch of training leaves every
# weight at 0, so the front means nothing; give real settings as extra options (--epochs 30 ..., as in
# benchmarks/search_bench.sh)
"$SWS" search run "$OUT" --storage "$URL" --n-workers 2 --trials 4 --model lenet-300-100 \
    --train-subset 600 --val-size 200 --pretrain-epochs 1 --epochs 1 --quiet "$@"
