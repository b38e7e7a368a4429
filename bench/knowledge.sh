#!/usr/bin/env bash
# Knowledge benchmark: ingest throughput (chunks/s) and query latency p50/p99 at >= 10,000
# chunks, on SQLite and on PostgreSQL, through the code paths the API uses (not over HTTP: this
# measures storage and ranking, not the request pipeline). Writes bench/results/knowledge.md.
# Not a test: numbers vary with the machine. DESIGN.md budgets query p99 < 20 ms at 10k chunks
# on SQLite and ingest >= 5,000 chunks/s.
#
#   bench/knowledge.sh                      # 10,000 chunks, 1,000 queries
#   CHUNKS=50000 QUERIES=2000 bench/knowledge.sh
#   PG_PORT=58432 bench/knowledge.sh        # the throw-away PostgreSQL's port (default: one the OS hands out)
set -euo pipefail
cd "$(dirname "$0")/.."
CHUNKS=${CHUNKS:-10000}
QUERIES=${QUERIES:-1000}
PG_PORT=${PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
TARGET=${CARGO_TARGET_DIR:-target}
WORK=$(mktemp -d /tmp/agentplane-kbench.XXXXXX)
chmod 755 "$WORK"
cleanup() {
  if [ -n "${PG_BIN:-}" ] && [ -f "$WORK/pg/postmaster.pid" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "==> building (release)"
cargo build --release --quiet --example knowledge_bench
BIN="$TARGET/release/examples/knowledge_bench"

ROWS=()
echo "==> SQLite"
ROWS+=("$("$BIN" "sqlite://$WORK/bench.db" "$CHUNKS" "$QUERIES")")

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ]; then
  echo "==> PostgreSQL (throw-away, 127.0.0.1:$PG_PORT)"
  mkdir -p "$WORK/pg" && chown postgres "$WORK/pg"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/log" -w \
    -o "-k $WORK/pg -h 127.0.0.1 -p $PG_PORT" start >/dev/null
  runuser -u postgres -- "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" kbench
  ROWS+=("$("$BIN" "postgres://postgres@127.0.0.1:$PG_PORT/kbench" "$CHUNKS" "$QUERIES")")
else
  echo "PostgreSQL not installed: skipping (scripts/test.sh installs it)" >&2
fi

OUT=bench/results/knowledge.md
{
  echo "# Knowledge benchmark"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), release build, \`bench/knowledge.sh\` (CHUNKS=$CHUNKS, QUERIES=$QUERIES)."
  echo "Synthetic corpus: ~4,000-character documents of Zipf-distributed words, chunk_size 500, overlap 50,"
  echo "20 documents per ingest transaction. Queries: 2-3 words, top 5, one in four with a metadata filter;"
  echo "50 warm-up queries not counted. Measured in-process through \`knowledge::prepare\`/\`write\` and \`knowledge::search\`."
  echo
  echo "| backend | chunks | documents | ingest chunks/s | query p50 ms | query p99 ms | query max ms | queries | hits/query |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for r in "${ROWS[@]}"; do echo "$r"; done
  echo
  echo "Budgets (DESIGN.md): query p99 < 20 ms at 10,000 chunks on SQLite; ingest >= 5,000 chunks/s."
} >"$OUT"
cat "$OUT"
