#!/usr/bin/env bash
# Benchmarks agentplane against a bare poem handler serving the same JSON bytes, with wrk on
# loopback, and writes bench/results/<name>.md and an SVG chart. Not a test: numbers vary
# with the machine; the ratios are what DESIGN.md budgets.
#
#   bench/run.sh                    # the tree's release build, unpinned, 10 s per case
#   DURATION=30s bench/run.sh
#   CORES="1 2" bench/run.sh        # the server pinned (taskset) to 1, then 2 cores; wrk on
#                                   # the cores left (all of them when none is left)
#   SERVERS="before=/tmp/old/agentplane after=./target/release/agentplane" \
#     NAME=2026-12-04-ratelimit CORES="1 2" bench/run.sh
#                                   # two builds side by side (nothing is built; BARE names
#                                   # the bare poem binary when the tree has none)
#
# Every server starts on a fresh SQLite database with 200 agents; the bootstrap admin key
# makes the requests (rate limits raised so that no request is refused). Ports come from the
# OS. Other processes skew the figures: the report records the load average before the run and,
# per case, the CPU that processes other than the server and wrk used meanwhile (from /proc).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
CORES=${CORES:-}
NAME=${NAME:-$(date -u +%Y-%m-%d)}
WORK=$(mktemp -d /tmp/agentplane-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v taskset >/dev/null || { apt-get update -qq && apt-get install -y -qq util-linux >/dev/null; }

if [ -z "${SERVERS:-}" ]; then
  echo "==> building (release)"
  cargo build --release --quiet --bin agentplane --example bare_poem
  SERVERS="agentplane=./target/release/agentplane"
fi
BARE=${BARE:-./target/release/examples/bare_poem}
TOTAL=$(nproc)

# cpus N: the server's cpu list and the load generator's for a server on N cores (or "all").
cpus() {
  local n=$1
  if [ "$n" = all ]; then echo "all all"; return; fi
  local server="0-$((n - 1))" load
  if [ "$n" -lt "$TOTAL" ]; then load="$n-$((TOTAL - 1))"; else load="0-$((TOTAL - 1))"; fi
  echo "$server $load"
}
pinned() { # cpulist -> sets PIN, the command prefix that pins to it (none for "all")
  if [ "$1" = all ]; then PIN=(); else PIN=(taskset -c "$1"); fi
}
count() { # cpulist -> number of cpus
  if [ "$1" = all ]; then echo "$TOTAL"; else echo $(( ${1#*-} - ${1%-*} + 1 )); fi
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
load1() { cut -d' ' -f1 /proc/loadavg; }
busy() { awk '/^cpu / {print $2 + $3 + $4}' /proc/stat; } # user and system time of all cpus, in ticks
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; } # one process's

# start_server label binary cpulist: starts it on a fresh database with 200 agents and sets
# BASE, H (the auth header), ID (an agent) and SERVER_PID.
start_server() {
  local label=$1 bin=$2 list=$3 db="$WORK/$1-$RANDOM.db"
  pinned "$list"
  AGENTPLANE_LOG=warn "${PIN[@]}" "$bin" serve --listen 127.0.0.1:0 --database "$db" \
    --rate-limit-per-hour 1000000000 --rate-limit-burst 1000000000 \
    >"$WORK/$label.out" 2>"$WORK/$label.err" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  BASE=""
  for _ in $(seq 1 200); do
    BASE=$(grep -o 'listening on http://[0-9.:]*' "$WORK/$label.out" 2>/dev/null | head -n1 | sed 's/listening on //') || true
    [ -n "$BASE" ] && break
    sleep 0.1
  done
  [ -n "$BASE" ] || { echo "$label did not start:"; cat "$WORK/$label.err"; exit 1; }
  local key
  key=$(grep -o 'ap_[A-Za-z0-9]*' "$WORK/$label.out" | head -n1)
  H="Authorization: Bearer $key"
  for i in $(seq 1 200); do
    curl -sf -o /dev/null -X POST "$BASE/v1/agents" -H "$H" -H 'content-type: application/json' \
      -d "{\"name\":\"agent $i\",\"type\":\"assistant\",\"description\":\"bench agent $i\",\"tags\":[\"t$((i % 7))\"],\"configuration\":{\"model\":\"gpt-4\",\"temperature\":0.7}}"
  done
  ID=$(curl -sf "$BASE/v1/agents?per_page=1&fields=id" -H "$H" | sed 's/.*"id":"\([^"]*\)".*/\1/')
  [ -s "$WORK/agent.json" ] || curl -sf "$BASE/v1/agents/$ID" -H "$H" >"$WORK/agent.json"
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

run() { # server cores loadlist pid case url [wrk args]: pid is the server's
  local server=$1 cores=$2 list=$3 pid=$4 name=$5 url=$6
  shift 6
  local out rps p99 bad b0 s0 b1 s1 start end wrk_cpu others
  pinned "$list"
  b0=$(busy) s0=$(ticks "$pid") start=$(date +%s.%N)
  out=$( { TIMEFORMAT='%3U %3S'; time "${PIN[@]}" wrk -t"$(count "$list")" -c"$CONNS" -d"$DURATION" --latency "$@" "$url"; } 2>"$WORK/wrk.time")
  b1=$(busy) s1=$(ticks "$pid") end=$(date +%s.%N)
  wrk_cpu=$(awk '{print $1 + $2}' "$WORK/wrk.time")
  # The share of the machine's CPU that neither the server nor wrk used while wrk ran.
  others=$(awk -v b="$((b1 - b0))" -v s="$((s1 - s0))" -v w="$wrk_cpu" -v t="$(getconf CLK_TCK)" \
    -v t0="$start" -v t1="$end" -v n="$TOTAL" \
    'BEGIN { o = ((b - s) / t - w) / ((t1 - t0) * n) * 100; printf "%.0f", (o < 0 ? 0 : o) }')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  bad=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$cores" "$name" "$rps" "$p99" "${bad:-0}" "$others" |
    tee -a "$WORK/results.tsv"
}
: >"$WORK/results.tsv"
LOAD=$(load1)
echo "==> wrk -c$CONNS -d$DURATION; server cores: ${CORES:-all}; load now $LOAD"
# The first server's agent JSON is what the bare handler serves.
first=${SERVERS%% *}
for cores in ${CORES:-all}; do
  read -r slist llist <<<"$(cpus "$cores")"
  echo "==> server on cpus $slist, wrk on cpus $llist"
  for entry in $SERVERS; do
    label=${entry%%=*}
    start_server "$label" "${entry#*=}" "$slist"
    if [ "$entry" = "$first" ] && [ -x "$BARE" ]; then
      port=$(free_port)
      pinned "$slist"
      "${PIN[@]}" "$BARE" "127.0.0.1:$port" "$WORK/agent.json" &
      bare=$!
      PIDS+=("$bare")
      sleep 0.5
      run "bare poem" "$cores" "$llist" "$bare" "same bytes, no storage" "http://127.0.0.1:$port/v1/agents/$ID"
      stop "$bare"
    fi
    run "$label" "$cores" "$llist" "$SERVER_PID" "GET /v1/agents/{id}" "$BASE/v1/agents/$ID" -H "$H"
    run "$label" "$cores" "$llist" "$SERVER_PID" "GET /v1/agents (filtered, sorted)" "$BASE/v1/agents?status=active&search=bench&sort=name&order=asc&per_page=20" -H "$H"
    run "$label" "$cores" "$llist" "$SERVER_PID" "GET /v1/health" "$BASE/v1/health" -H "$H"
    stop "$SERVER_PID"
  done
done

mkdir -p bench/results
python3 - "$WORK/results.tsv" "bench/results/$NAME" "$DURATION" "$CONNS" "$TOTAL" "$LOAD" <<'PY'
import sys, html, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
out, duration, conns, total, load = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
servers = []
for r in rows:
    if r[0] != "bare poem" and r[0] not in servers:
        servers.append(r[0])
by = {(r[0], r[1], r[2]): r for r in rows}
bare = {r[1]: float(r[3]) for r in rows if r[0] == "bare poem"}
cases = []
for r in rows:
    if r[0] != "bare poem" and r[2] not in cases:
        cases.append(r[2])
cores = list(dict.fromkeys(r[1] for r in rows))
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
others = [int(r[6]) for r in rows]

def where(c):
    if c == "all":
        return "unpinned"
    n = int(c)
    if n < total:
        return f"server on cpus 0-{n - 1}, wrk on the other {total - n}"
    return f"server and wrk share all {total} cpus"

with open(out + ".md", "w") as f:
    f.write(f"# Benchmark {out.rsplit('/', 1)[-1]}\n\n")
    f.write(f"wrk, {conns} connections, {duration} per case, loopback, SQLite, 200 agents, "
            f"{total} cores ({model}); the server pinned with `taskset` where a core count is given. "
            f"The 1-minute load average before the run was {load}; while the cases ran, other processes "
            f"used {min(others)}–{max(others)}% of the machine's CPU (column \"others\": busy time "
            f"less the server's and wrk's, from /proc).\n\n")
    head = "| server cores | case |"
    rule = "| --- | --- |"
    for s in servers:
        head += f" {s} req/s | p99 | × bare | others |"
        rule += " ---: | ---: | ---: | ---: |"
    if len(servers) == 2:
        head += f" {servers[1]} / {servers[0]} |"
        rule += " ---: |"
    f.write(head + "\n" + rule + "\n")
    for c in cores:
        if c in bare:
            p99 = by[("bare poem", c, "same bytes, no storage")][4]
            busy = by[("bare poem", c, "same bytes, no storage")][6]
            cells = f"| {c} ({where(c)}) | bare poem, same bytes | {bare[c]:,.0f} | {p99} | 1.00 | {busy}% |"
            cells += " | | | |" * (len(servers) - 1) + (" |" if len(servers) == 2 else "")
            f.write(cells + "\n")
        for case in cases:
            line = f"| {c} | {case} |"
            vals = []
            for s in servers:
                r = by.get((s, c, case))
                if r is None:
                    line += " | | | |"
                    vals.append(None)
                    continue
                rps = float(r[3])
                vals.append(rps)
                bad = f" ({r[5]} non-2xx)" if r[5] not in ("0", "") else ""
                ratio = f"{rps / bare[c]:.3f}" if c in bare else ""
                line += f" {rps:,.0f}{bad} | {r[4]} | {ratio} | {r[6]}% |"
            if len(servers) == 2:
                line += f" {vals[1] / vals[0]:.2f}× |" if None not in vals else " |"
            f.write(line + "\n")

bars = []
for c in cores:
    if c in bare:
        bars.append((f"{c} core(s) · bare poem", bare[c], -1))
    for case in cases:
        for i, s in enumerate(servers):
            r = by.get((s, c, case))
            if r:
                bars.append((f"{c} core(s) · {case} · {s}", float(r[3]), i))
colors = ["#d8893b", "#3b7dd8", "#5aa05a", "#a05aa0"]
width, bar_h, gap, left = 900, 22, 8, 430
top = max(b[1] for b in bars)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{len(bars)*(bar_h+gap)+40}" font-family="sans-serif" font-size="12">',
       '<text x="10" y="18" font-weight="bold">requests per second (higher is better)</text>']
for i, (name, rps, k) in enumerate(bars):
    y = 30 + i * (bar_h + gap)
    w = (width - left - 90) * rps / top
    svg.append(f'<text x="10" y="{y+16}">{html.escape(name)}</text>')
    svg.append(f'<rect x="{left}" y="{y}" width="{w:.0f}" height="{bar_h}" fill="{"#888" if k < 0 else colors[k % len(colors)]}"/>')
    svg.append(f'<text x="{left + w + 6:.0f}" y="{y+16}">{rps:,.0f}</text>')
svg.append("</svg>")
open(out + ".svg", "w").write("\n".join(svg))
print(open(out + ".md").read())
PY
