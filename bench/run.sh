#!/usr/bin/env bash
# Benchmarks agentplane against a bare poem handler serving the same JSON bytes, with wrk on
# loopback, and writes bench/results/<date>.md and an SVG chart. Not a test: numbers vary
# with the machine; the ratios are what DESIGN.md budgets.
#
#   bench/run.sh            # 10 s per case
#   DURATION=30s bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
WORK=$(mktemp -d /tmp/agentplane-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

echo "==> building (release)"
cargo build --release --quiet --bin agentplane --example bare_poem

echo "==> starting agentplane on SQLite"
AGENTPLANE_LOG=warn ./target/release/agentplane serve --listen 127.0.0.1:18301 --database "$WORK/bench.db" >"$WORK/ap.out" 2>"$WORK/ap.err" &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q listening "$WORK/ap.out" 2>/dev/null && break; sleep 0.1; done
KEY=$(grep -o 'ap_[A-Za-z0-9]*' "$WORK/ap.out" | head -n1)
H="Authorization: Bearer $KEY"
for i in $(seq 1 200); do
  curl -sf -o /dev/null -X POST http://127.0.0.1:18301/v1/agents -H "$H" -H 'content-type: application/json' \
    -d "{\"name\":\"agent $i\",\"type\":\"assistant\",\"description\":\"bench agent $i\",\"tags\":[\"t$((i % 7))\"],\"configuration\":{\"model\":\"gpt-4\",\"temperature\":0.7}}"
done
ID=$(curl -sf "http://127.0.0.1:18301/v1/agents?per_page=1&fields=id" -H "$H" | sed 's/.*"id":"\([^"]*\)".*/\1/')
curl -sf "http://127.0.0.1:18301/v1/agents/$ID" -H "$H" >"$WORK/agent.json"

echo "==> starting the bare poem peer"
./target/release/examples/bare_poem 127.0.0.1:18302 "$WORK/agent.json" &
PIDS+=($!)
sleep 0.5

run() { # name url [header]
  local name=$1 url=$2
  shift 2
  local out
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" "$url")
  local rps p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  printf '%s\t%s\t%s\n' "$name" "$rps" "$p99" | tee -a "$WORK/results.tsv"
}
: >"$WORK/results.tsv"
echo "==> wrk -t$THREADS -c$CONNS -d$DURATION"
run "bare poem, same bytes" "http://127.0.0.1:18302/v1/agents/$ID"
run "GET /v1/agents/{id}" "http://127.0.0.1:18301/v1/agents/$ID" -H "$H"
run "GET /v1/agents (filtered, sorted)" "http://127.0.0.1:18301/v1/agents?status=active&search=bench&sort=name&order=asc&per_page=20" -H "$H"

mkdir -p bench/results
STAMP=$(date -u +%Y-%m-%d)
python3 - "$WORK/results.tsv" "bench/results/$STAMP" "$DURATION" "$CONNS" <<'PY'
import sys, html
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
out, duration, conns = sys.argv[2], sys.argv[3], sys.argv[4]
base = float(rows[0][1])
with open(out + ".md", "w") as f:
    f.write(f"# Benchmark {out.rsplit('/',1)[-1]}\n\nwrk, {conns} connections, {duration} per case, loopback, SQLite, 200 agents.\n\n")
    f.write("| case | requests/s | p99 | ratio to bare poem |\n| --- | ---: | ---: | ---: |\n")
    for name, rps, p99 in rows:
        f.write(f"| {name} | {float(rps):,.0f} | {p99} | {float(rps)/base:.2f} |\n")
width, bar_h, gap, left = 720, 28, 14, 260
top = max(float(r[1]) for r in rows)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{len(rows)*(bar_h+gap)+40}" font-family="sans-serif" font-size="13">',
       '<text x="10" y="18" font-weight="bold">requests per second (higher is better)</text>']
for i, (name, rps, _) in enumerate(rows):
    y = 30 + i * (bar_h + gap)
    w = (width - left - 90) * float(rps) / top
    svg.append(f'<text x="10" y="{y+19}">{html.escape(name)}</text>')
    svg.append(f'<rect x="{left}" y="{y}" width="{w:.0f}" height="{bar_h}" fill="{"#888" if i == 0 else "#3b7dd8"}"/>')
    svg.append(f'<text x="{left + w + 6:.0f}" y="{y+19}">{float(rps):,.0f}</text>')
svg.append("</svg>")
open(out + ".svg", "w").write("\n".join(svg))
print(open(out + ".md").read())
PY
