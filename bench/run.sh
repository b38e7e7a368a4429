#!/usr/bin/env bash
# Benchmarks agentplane against a bare poem handler serving the same JSON bytes, with wrk on
# loopback, and writes bench/results/<name>.md and an SVG chart. Not a test: numbers vary
# with the machine; the ratios are what DESIGN.md budgets.
#
#   bench/run.sh                    # the tree's release build, unpinned, 10 s per case
#   DURATION=30s bench/run.sh
#   CORES="1 2" bench/run.sh        # the server pinned (taskset) to 1, then 2 cores; wrk on
#                                   # the cores left (all of them when none is left)
#   BACKENDS="sqlite postgres" PGURL=postgres://user@127.0.0.1:5432 bench/run.sh
#                                   # also on PostgreSQL (a fresh database per server, created
#                                   # and dropped through psql at PGURL)
#   SERVERS="before=/tmp/old/agentplane after=./target/release/agentplane" \
#     NAME=2026-12-04-speed CORES="1 2" bench/run.sh
#                                   # two builds side by side (nothing is built; BARE names
#                                   # the bare poem binary when the tree has none)
#
# Every server starts on a fresh database with 100 agents; the bootstrap admin key makes the
# requests (rate limits raised so that no request is refused). The cases, in this order:
# `GET /v1/agents/{id}`, the filtered sorted list and the plain list (100 agents), `POST
# /v1/agents` (an authenticated write), then the organization is topped up to 100,000 agents in
# SQL and both lists run again. The peak RSS of the server is recorded. Ports come from the OS.
# The bare handler serves the first server's agent (the ceiling the budgets use) and its
# filtered list page (the list's ceiling once the size of its response is paid for).
# Other processes skew the figures: the report records the load average before the run and,
# per case, the CPU that processes other than the server and wrk used meanwhile (from /proc).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
CORES=${CORES:-}
BACKENDS=${BACKENDS:-sqlite}
PGURL=${PGURL:-${AGENTPLANE_TEST_POSTGRES:-}}
BIG=${BIG:-100000}
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

# database backend label: a fresh database for one server, as its URL (sets DB_URL, DB_NAME).
database() {
  DB_NAME="bench_$2_$$_$RANDOM"
  DB_NAME=${DB_NAME//[^a-zA-Z0-9_]/_}
  if [ "$1" = postgres ]; then
    [ -n "$PGURL" ] || { echo "PostgreSQL needs PGURL"; exit 1; }
    psql -q "$PGURL" -c "CREATE DATABASE $DB_NAME" >/dev/null
    DB_URL="${PGURL%/}/$DB_NAME"
  else
    DB_URL="$WORK/$DB_NAME.db"
  fi
}
drop_database() { # backend
  if [ "$1" = postgres ]; then psql -q "$PGURL" -c "DROP DATABASE IF EXISTS $DB_NAME" >/dev/null || true; fi
}
sql() { # backend statement
  if [ "$1" = postgres ]; then psql -qAt "$DB_URL" -c "$2"; else sqlite3 -cmd '.timeout 5000' "$DB_URL" "$2"; fi
}
# grow backend n: copies the organization's agents (with new ids) until it has n.
grow() {
  local backend=$1 n=$2 cols have
  if [ "$backend" = postgres ]; then
    cols=$(sql postgres "SELECT string_agg(column_name, ', ' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'agents' AND column_name <> 'id'")
  else
    cols=$(sql sqlite "SELECT group_concat(name, ', ') FROM pragma_table_info('agents') WHERE name <> 'id'")
  fi
  have=$(sql "$backend" "SELECT count(*) FROM agents")
  if [ "$have" -ge "$n" ]; then echo "$have"; return; fi
  local copies=$(( (n - have + have - 1) / have ))
  if [ "$backend" = postgres ]; then
    sql postgres "INSERT INTO agents (id, $cols) SELECT 'agent_' || substr(md5(random()::text || g), 1, 26), $cols FROM agents CROSS JOIN generate_series(1, $copies) g LIMIT $((n - have))" >/dev/null
    sql postgres "ANALYZE agents" >/dev/null
  else
    sql sqlite "WITH RECURSIVE g(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM g WHERE k < $copies) INSERT INTO agents (id, $cols) SELECT 'agent_' || lower(hex(randomblob(13))), $cols FROM agents CROSS JOIN g LIMIT $((n - have)); ANALYZE;" >/dev/null
  fi
  sql "$backend" "SELECT count(*) FROM agents"
}

FILTERED="status=active&search=bench&sort=name&order=asc&per_page=20"
# start_server label binary cpulist backend: starts it on a fresh database with 100 agents and
# sets BASE, H (the auth header), ID (an agent) and SERVER_PID.
start_server() {
  local label=$1 bin=$2 list=$3 backend=$4
  database "$backend" "$label"
  pinned "$list"
  AGENTPLANE_LOG=warn "${PIN[@]}" "$bin" serve --listen 127.0.0.1:0 --database "$DB_URL" \
    --rate-limit-per-hour 1000000000 --rate-limit-burst 1000000000 \
    >"$WORK/$label.out" 2>"$WORK/$label.err" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  BASE=""
  for _ in $(seq 1 300); do
    BASE=$(grep -o 'listening on http://[0-9.:]*' "$WORK/$label.out" 2>/dev/null | head -n1 | sed 's/listening on //') || true
    [ -n "$BASE" ] && break
    sleep 0.1
  done
  [ -n "$BASE" ] || { echo "$label did not start:"; cat "$WORK/$label.err"; exit 1; }
  local key
  key=$(grep -o 'ap_[A-Za-z0-9]*' "$WORK/$label.out" | head -n1)
  H="Authorization: Bearer $key"
  for i in $(seq 1 100); do
    curl -sf -o /dev/null -X POST "$BASE/v1/agents" -H "$H" -H 'content-type: application/json' \
      -d "{\"name\":\"agent $i\",\"type\":\"assistant\",\"description\":\"bench agent $i\",\"tags\":[\"t$((i % 7))\"],\"configuration\":{\"model\":\"gpt-4\",\"temperature\":0.7}}"
  done
  ID=$(curl -sf "$BASE/v1/agents?per_page=1&fields=id" -H "$H" | sed 's/.*"id":"\([^"]*\)".*/\1/')
  [ -s "$WORK/agent.json" ] || curl -sf "$BASE/v1/agents/$ID" -H "$H" >"$WORK/agent.json"
  [ -s "$WORK/list.json" ] || curl -sf "$BASE/v1/agents?$FILTERED" -H "$H" >"$WORK/list.json"
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
peak_rss() { awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo 0; } # MiB

cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"name":"posted agent","type":"assistant","description":"bench write","tags":["w"],"configuration":{"model":"gpt-4","temperature":0.7}}'
LUA

run() { # server backend cores loadlist pid case url [wrk args]: pid is the server's
  local server=$1 backend=$2 cores=$3 list=$4 pid=$5 name=$6 url=$7
  shift 7
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
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$backend" "$cores" "$name" "$rps" "$p99" "${bad:-0}" "$others" "$(peak_rss "$pid")" |
    tee -a "$WORK/results.tsv"
}
: >"$WORK/results.tsv"
LOAD=$(load1)
echo "==> wrk -c$CONNS -d$DURATION; server cores: ${CORES:-all}; backends: $BACKENDS; load now $LOAD"
# The first server's agent and filtered list page are what the bare handler serves.
first=${SERVERS%% *}
for cores in ${CORES:-all}; do
  read -r slist llist <<<"$(cpus "$cores")"
  echo "==> server on cpus $slist, wrk on cpus $llist"
  for backend in $BACKENDS; do
    for entry in $SERVERS; do
      label=${entry%%=*}
      start_server "$label" "${entry#*=}" "$slist" "$backend"
      if [ "$entry" = "$first" ] && [ "$backend" = "${BACKENDS%% *}" ] && [ -x "$BARE" ]; then
        port=$(free_port)
        pinned "$slist"
        "${PIN[@]}" "$BARE" "127.0.0.1:$port" "$WORK/agent.json" "$WORK/list.json" &
        bare=$!
        PIDS+=("$bare")
        sleep 0.5
        run "bare poem" - "$cores" "$llist" "$bare" "same bytes, no storage" "http://127.0.0.1:$port/v1/agents/$ID"
        run "bare poem" - "$cores" "$llist" "$bare" "list page bytes" "http://127.0.0.1:$port/v1/agents"
        stop "$bare"
      fi
      r() { run "$label" "$backend" "$cores" "$llist" "$SERVER_PID" "$@"; }
      r "GET /v1/agents/{id}" "$BASE/v1/agents/$ID" -H "$H"
      r "list filtered, sorted (100 agents)" "$BASE/v1/agents?$FILTERED" -H "$H"
      r "list (100 agents)" "$BASE/v1/agents?per_page=20" -H "$H"
      r "POST /v1/agents" "$BASE/v1/agents" -H "$H" -s "$WORK/post.lua"
      echo "    grown to $(grow "$backend" "$BIG") agents"
      r "list filtered, sorted ($BIG agents)" "$BASE/v1/agents?$FILTERED" -H "$H"
      r "list ($BIG agents)" "$BASE/v1/agents?per_page=20" -H "$H"
      stop "$SERVER_PID"
      drop_database "$backend"
    done
  done
done

mkdir -p bench/results
python3 - "$WORK/results.tsv" "bench/results/$NAME" "$DURATION" "$CONNS" "$TOTAL" "$LOAD" <<'PY'
import sys, html
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
out, duration, conns, total, load = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
# columns: server, backend, cores, case, rps, p99, non-2xx, others %, peak RSS MiB
servers = list(dict.fromkeys(r[0] for r in rows if r[0] != "bare poem"))
backends = list(dict.fromkeys(r[1] for r in rows if r[0] != "bare poem"))
cores = list(dict.fromkeys(r[2] for r in rows))
cases = list(dict.fromkeys(r[3] for r in rows if r[0] != "bare poem"))
by = {(r[0], r[1], r[2], r[3]): r for r in rows}
bare = {r[2]: r for r in rows if r[0] == "bare poem" and r[3] != "list page bytes"}
# The bare handler serving the filtered list page's bytes: the list's ceiling when it pays
# for its response's size as well (recorded beside the budget, which is against `bare`).
bare_list = {r[2]: r for r in rows if r[0] == "bare poem" and r[3] == "list page bytes"}
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
others = [int(r[7]) for r in rows]

def where(c):
    if c == "all":
        return "unpinned"
    n = int(c)
    if n < total:
        return f"server on cpus 0-{n - 1}, wrk on the other {total - n}"
    return f"server and wrk share all {total} cpus"

def ratio(c, rps):
    return f"{rps / float(bare[c][4]):.3f}" if c in bare else ""

with open(out + ".md", "w") as f:
    f.write(f"# Benchmark {out.rsplit('/', 1)[-1]}\n\n")
    f.write(f"wrk, {conns} connections, {duration} per case, loopback, {total} cores ({model}); "
            f"the server pinned with `taskset` where a core count is given. The 1-minute load "
            f"average before the run was {load}; while the cases ran, other processes used "
            f"{min(others)}–{max(others)}% of the machine's CPU (column \"others\": busy time less "
            f"the server's and wrk's, from /proc). RSS: the server's peak resident set (VmHWM) "
            f"after the case, in MiB.\n\n")
    for b in backends:
        f.write(f"## {b}\n\n")
        head, rule = "| server cores | case |", "| --- | --- |"
        for s in servers:
            head += f" {s} req/s | p99 | × bare | RSS | others |"
            rule += " ---: | ---: | ---: | ---: | ---: |"
        if len(servers) == 2:
            head += f" {servers[1]} / {servers[0]} |"
            rule += " ---: |"
        f.write(head + "\n" + rule + "\n")
        for c in cores:
            peers = ((f"{c} ({where(c)})", "bare poem, same bytes", bare),
                     (c, "bare poem, the filtered list page's bytes", bare_list))
            for label, name, rows_of in peers:
                if c not in rows_of:
                    continue
                r = rows_of[c]
                line = f"| {label} | {name} | {float(r[4]):,.0f} | {r[5]} | {ratio(c, float(r[4]))} | {r[8]} | {r[7]}% |"
                line += " | | | | |" * (len(servers) - 1) + (" |" if len(servers) == 2 else "")
                f.write(line + "\n")
            for case in cases:
                line, vals = f"| {c} | {case} |", []
                for s in servers:
                    r = by.get((s, b, c, case))
                    if r is None or not r[4]:
                        line += " | | | | |"
                        vals.append(None)
                        continue
                    rps = float(r[4])
                    vals.append(rps)
                    bad = f" ({r[6]} non-2xx)" if r[6] not in ("0", "") else ""
                    line += f" {rps:,.0f}{bad} | {r[5]} | {ratio(c, rps)} | {r[8]} | {r[7]}% |"
                if len(servers) == 2:
                    line += f" {vals[1] / vals[0]:.2f}× |" if None not in vals else " |"
                f.write(line + "\n")
        f.write("\n")
    # The budgets of DESIGN.md: SQLite, the server on one core.
    if "1" in bare and "sqlite" in backends:
        f.write("## Budgets (SQLite, server on one core)\n\n"
                "The budgets are against the bare handler serving one agent's bytes; the last column "
                "sets the filtered list against the bare handler serving the same list page's bytes "
                "(what writing that response costs by itself), recorded beside.\n\n"
                "| server | GET × bare (≥ 0.50) | list × bare (≥ 0.25) | list × bare list bytes |\n"
                "| --- | ---: | ---: | ---: |\n")
        for s in servers:
            g = by.get((s, "sqlite", "1", "GET /v1/agents/{id}"))
            l = by.get((s, "sqlite", "1", "list filtered, sorted (100 agents)"))
            if g and l and g[4] and l[4]:
                same = f"{float(l[4]) / float(bare_list['1'][4]):.3f}" if "1" in bare_list else ""
                f.write(f"| {s} | {ratio('1', float(g[4]))} | {ratio('1', float(l[4]))} | {same} |\n")
        f.write("\n")

bars = []
for c in cores:
    if c in bare:
        bars.append((f"{c} core(s) · bare poem", float(bare[c][4]), -1))
    if c in bare_list:
        bars.append((f"{c} core(s) · bare poem, list page bytes", float(bare_list[c][4]), -1))
    for b in backends:
        for case in cases:
            for i, s in enumerate(servers):
                r = by.get((s, b, c, case))
                if r and r[4]:
                    bars.append((f"{c} core(s) · {b} · {case} · {s}", float(r[4]), i))
colors = ["#d8893b", "#3b7dd8", "#5aa05a", "#a05aa0"]
width, bar_h, gap, left = 1000, 18, 6, 520
top = max(b[1] for b in bars)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{len(bars)*(bar_h+gap)+40}" font-family="sans-serif" font-size="11">',
       '<text x="10" y="18" font-weight="bold">requests per second (higher is better)</text>']
for i, (name, rps, k) in enumerate(bars):
    y = 30 + i * (bar_h + gap)
    w = max(1, (width - left - 90) * rps / top)
    svg.append(f'<text x="10" y="{y+13}">{html.escape(name)}</text>')
    svg.append(f'<rect x="{left}" y="{y}" width="{w:.0f}" height="{bar_h}" fill="{"#888" if k < 0 else colors[k % len(colors)]}"/>')
    svg.append(f'<text x="{left + w + 6:.0f}" y="{y+13}">{rps:,.0f}</text>')
svg.append("</svg>")
open(out + ".svg", "w").write("\n".join(svg))
print(open(out + ".md").read())
PY
