#!/usr/bin/env bash
# Memory under a sustained mixed load: RSS of `agentplane serve` (SQLite) sampled every
# INTERVAL seconds while wrk reads and writes for MINUTES minutes, then for IDLE seconds of
# rest, written to bench/results/memory-<NAME>.md and an SVG chart. Not a test: what matters
# is the shape (flat after warm-up, or growing), not the figures of one machine.
#
#   bench/memory.sh                              # the tree's release build, 10 minutes
#   MINUTES=3 bench/memory.sh
#   SERVERS="before=/tmp/old/agentplane after=./target/release/agentplane" \
#     MINUTES=3 NAME=2026-12-04 bench/memory.sh  # builds side by side, one after the other
#   SERVERS="arena2=MALLOC_ARENA_MAX=2:/tmp/old/agentplane" bench/memory.sh
#                                                # a server with environment variables
#                                                # (VAR=value,VAR=value:binary)
#
# The load, at CONNS connections in all: half `GET /v1/agents/{id}`, a quarter a filtered
# sorted list, a quarter `POST /v1/agents` (each a new agent, so the database grows as a
# real one does). The bootstrap admin key makes the requests, rate limits raised.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-10}
IDLE=${IDLE:-30}
INTERVAL=${INTERVAL:-5}
CONNS=${CONNS:-32}
NAME=${NAME:-$(date -u +%Y-%m-%d)}
WORK=$(mktemp -d /tmp/agentplane-memory.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

if [ -z "${SERVERS:-}" ]; then
  echo "==> building (release)"
  cargo build --release --quiet --bin agentplane
  SERVERS="agentplane=./target/release/agentplane"
fi

cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  local body = '{"name":"memory agent ' .. counter .. '","type":"assistant",' ..
    '"description":"bench write ' .. counter .. '","tags":["m' .. (counter % 13) .. '"],' ..
    '"configuration":{"model":"gpt-4","temperature":0.7}}'
  return wrk.format(nil, nil, nil, body)
end
LUA

rss() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo 0; } # MiB

# measure label spec: starts the server, loads it, samples RSS to $WORK/<label>.tsv.
measure() {
  local label=$1 spec=$2 bin envs=()
  bin=${spec##*:}
  if [ "$bin" != "$spec" ]; then IFS=',' read -r -a envs <<<"${spec%:*}"; fi
  local db="$WORK/$label.db"
  env "${envs[@]}" AGENTPLANE_LOG=warn "$bin" serve --listen 127.0.0.1:0 --database "$db" \
    --rate-limit-per-hour 1000000000 --rate-limit-burst 1000000000 \
    >"$WORK/$label.out" 2>"$WORK/$label.err" &
  local pid=$!
  PIDS+=("$pid")
  local base=""
  for _ in $(seq 1 300); do
    base=$(grep -o 'listening on http://[0-9.:]*' "$WORK/$label.out" 2>/dev/null | head -n1 | sed 's/listening on //') || true
    [ -n "$base" ] && break
    sleep 0.1
  done
  [ -n "$base" ] || { echo "$label did not start:"; cat "$WORK/$label.err"; exit 1; }
  local key h id
  key=$(grep -o 'ap_[A-Za-z0-9]*' "$WORK/$label.out" | head -n1)
  h="Authorization: Bearer $key"
  for i in $(seq 1 100); do
    curl -sf -o /dev/null -X POST "$base/v1/agents" -H "$h" -H 'content-type: application/json' \
      -d "{\"name\":\"agent $i\",\"type\":\"assistant\",\"tags\":[\"t$((i % 7))\"]}"
  done
  id=$(curl -sf "$base/v1/agents?per_page=1&fields=id" -H "$h" | sed 's/.*"id":"\([^"]*\)".*/\1/')
  local seconds=$((MINUTES * 60)) quarter=$((CONNS / 4 > 0 ? CONNS / 4 : 1))
  echo "==> $label: ${MINUTES} min of load, then ${IDLE} s idle"
  wrk -t1 -c$((quarter * 2)) -d"${seconds}s" -H "$h" "$base/v1/agents/$id" >"$WORK/$label.get" &
  local w1=$!
  wrk -t1 -c"$quarter" -d"${seconds}s" -H "$h" \
    "$base/v1/agents?type=assistant&sort=-created_at&per_page=20" >"$WORK/$label.list" &
  local w2=$!
  wrk -t1 -c"$quarter" -d"${seconds}s" -H "$h" -s "$WORK/post.lua" "$base/v1/agents" >"$WORK/$label.post" &
  local w3=$!
  PIDS+=("$w1" "$w2" "$w3")
  local start now t
  start=$(date +%s)
  : >"$WORK/$label.tsv"
  while :; do
    now=$(date +%s)
    t=$((now - start))
    printf '%s\t%s\n' "$t" "$(rss "$pid")" >>"$WORK/$label.tsv"
    [ "$t" -ge $((seconds + IDLE)) ] && break
    sleep "$INTERVAL"
  done
  wait "$w1" "$w2" "$w3" 2>/dev/null || true
  for f in get list post; do
    awk -v l="$label" -v f="$f" '/Requests\/sec/ {print l "\t" f "\t" $2}' "$WORK/$label.$f" >>"$WORK/rates.tsv"
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

: >"$WORK/rates.tsv"
LABELS=()
for s in $SERVERS; do
  label=${s%%=*}
  LABELS+=("$label")
  measure "$label" "${s#*=}"
done

mkdir -p bench/results
OUT=bench/results/memory-$NAME
python3 - "$WORK" "$OUT" "$MINUTES" "$IDLE" "$CONNS" "${LABELS[@]}" <<'PY'
import sys, os, html
work, out, minutes, idle, conns, labels = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6:]
series = {}
for l in labels:
    rows = [line.split("\t") for line in open(os.path.join(work, l + ".tsv")) if line.strip()]
    series[l] = [(int(t), float(r)) for t, r in rows]
rates = {}
for line in open(os.path.join(work, "rates.tsv")):
    l, f, r = line.split()
    rates.setdefault(l, {})[f] = r
load_end = minutes * 60
md = [f"# RSS under a mixed load ({minutes} min at {conns} connections, then {idle} s idle; SQLite)", "",
      "| server | after 1 min | at the end of the load | max | after the idle | GET/s | list/s | POST/s |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
def at(s, t):
    best = min(s, key=lambda p: abs(p[0] - t))
    return best[1]
for l, s in series.items():
    r = rates.get(l, {})
    md.append(f"| {l} | {at(s, 60):.1f} MiB | {at(s, load_end):.1f} MiB | {max(v for _, v in s):.1f} MiB | "
              f"{s[-1][1]:.1f} MiB | {r.get('get', '-')} | {r.get('list', '-')} | {r.get('post', '-')} |")
md += ["", "RSS (MiB) every sample:", "", "| s | " + " | ".join(labels) + " |", "| ---: |" + " ---: |" * len(labels)]
for i, (t, _) in enumerate(series[labels[0]]):
    md.append(f"| {t} | " + " | ".join(f"{series[l][i][1]:.1f}" if i < len(series[l]) else "" for l in labels) + " |")
open(out + ".md", "w").write("\n".join(md) + "\n")
W, H, L, B = 720, 360, 60, 40
tmax = max(t for s in series.values() for t, _ in s) or 1
vmax = max(v for s in series.values() for _, v in s) * 1.1 or 1
x = lambda t: L + (W - L - 20) * t / tmax
y = lambda v: H - B - (H - B - 20) * v / vmax
colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-20}" y2="{H-B}" stroke="black"/>',
       f'<line x1="{L}" y1="20" x2="{L}" y2="{H-B}" stroke="black"/>',
       f'<line x1="{x(load_end):.1f}" y1="20" x2="{x(load_end):.1f}" y2="{H-B}" stroke="#999" stroke-dasharray="4"/>',
       f'<text x="{x(load_end)+4:.1f}" y="32" fill="#666">load ends</text>',
       f'<text x="{W/2}" y="{H-8}" text-anchor="middle">seconds</text>',
       f'<text x="14" y="{(H-B)/2}" transform="rotate(-90 14 {(H-B)/2})" text-anchor="middle">RSS (MiB)</text>']
for k in range(5):
    v = vmax * k / 4
    svg.append(f'<text x="{L-6}" y="{y(v)+4:.1f}" text-anchor="end">{v:.0f}</text>')
    t = tmax * k / 4
    svg.append(f'<text x="{x(t):.1f}" y="{H-B+16}" text-anchor="middle">{t:.0f}</text>')
for i, (l, s) in enumerate(series.items()):
    c = colors[i % len(colors)]
    pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in s)
    svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{pts}"/>')
    svg.append(f'<text x="{L+10}" y="{36+16*i}" fill="{c}">{html.escape(l)}</text>')
svg.append("</svg>")
open(out + ".svg", "w").write("\n".join(svg) + "\n")
print(open(out + ".md").read().split("\n\nRSS")[0])
PY
