#!/usr/bin/env bash
# Benchmarks `agentplane mock` against Stoplight Prism: both mock the same spec (our
# generated/openapi.json and the petstore-expanded fixture) on loopback and take the same wrk
# load on the same operation. Records requests per second, p50 and p99 latency, resident
# memory after the load (the whole process tree) and the time from process start to the first
# answered request into bench/results/mock.md, with an SVG chart (bench/results/mock.svg).
# Not a test and not run in CI: the numbers vary with the machine. DESIGN.md budgets the
# ratios (20x the throughput, lower p99, a fifth of the memory, first answer within 100 ms).
#
#   bench/mock.sh
#   DURATION=20 CONNECTIONS=100 bench/mock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PRISM_VERSION=5.16.0
PRISM=$ROOT/.tools/node/node_modules/.bin/prism
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
# A port the OS hands out (the machines are shared: never a fixed number).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/agentplane-bench-mock.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

if ! command -v wrk >/dev/null; then
  echo "==> installing wrk"
  [ "$(id -u)" = 0 ] || { echo "need root to apt-get install wrk" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
if [ ! -x "$PRISM" ] || ! "$PRISM" --version 2>/dev/null | grep -q "$PRISM_VERSION"; then
  echo "==> installing @stoplight/prism-cli@$PRISM_VERSION into .tools/node"
  mkdir -p "$ROOT/.tools/node"
  (cd "$ROOT/.tools/node" && npm install --silent --no-audit --no-fund "@stoplight/prism-cli@$PRISM_VERSION")
fi

echo "==> building (release)"
cargo build --release --quiet --bin agentplane
AP=$TARGET/release/agentplane

# start NAME URL HEADER -- COMMAND...: starts COMMAND, waits for the first 2xx on URL, prints
# "pid first_response_ms".
start() {
  local url=$1 header=$2; shift 3
  python3 - "$url" "$header" "$WORK/server.log" "$@" <<'PY'
import subprocess, sys, time, urllib.request
url, header, log, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
out = open(log, "ab")
t0 = time.monotonic()
proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
while True:
    if proc.poll() is not None:
        sys.exit(f"{cmd[0]} exited with {proc.returncode}")
    if time.monotonic() - t0 > 60:
        proc.kill(); sys.exit("no answer within 60 s")
    try:
        req = urllib.request.Request(url)
        if header:
            k, v = header.split(":", 1)
            req.add_header(k.strip(), v.strip())
        with urllib.request.urlopen(req, timeout=1) as r:
            if 200 <= r.status < 300:
                break
    except Exception:
        time.sleep(0.002)
print(proc.pid, round((time.monotonic() - t0) * 1000, 1))
PY
}

# Resident memory of a process and all its descendants, in MiB.
rss_tree() {
  python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1])
children = {}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        stat = open(f"/proc/{pid}/stat").read()
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(pid))
    except OSError:
        pass
total, todo = 0, [root]
while todo:
    pid = todo.pop()
    todo.extend(children.get(pid, []))
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    except OSError:
        pass
print(round(total / 1024, 1))
PY
}

# to_ms "1.23ms" | "456.00us" | "1.2s" → milliseconds
to_ms() {
  python3 -c "import sys,re; v=sys.argv[1]; n=float(re.match(r'[0-9.]+',v).group()); u=v[len(re.match(r'[0-9.]+',v).group()):]; print(round(n*{'us':0.001,'ms':1,'s':1000,'m':60000}[u],3))" "$1"
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"
run() {
  local tool=$1 spec_name=$2 path=$3 header=$4; shift 4
  local port
  port=$(free_port)
  local url="http://127.0.0.1:$port$path"
  local cmd=()
  for arg in "$@"; do cmd+=("${arg//@PORT@/$port}"); done
  echo "==> $tool on $spec_name: GET $path"
  read -r pid first < <(start "$url" "$header" -- "${cmd[@]}")
  PIDS+=("$pid")
  local hdr=()
  [ -n "$header" ] && hdr=(-H "$header")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d3s "${hdr[@]}" "$url" >/dev/null
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "${hdr[@]}" "$url" >"$WORK/wrk.out"
  local rps p50 p99 non2xx rss
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$WORK/wrk.out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$WORK/wrk.out")")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.out")
  rss=$(rss_tree "$pid")
  kill -- -"$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  printf '   %s req/s, p50 %s ms, p99 %s ms, RSS %s MiB, first answer %s ms%s\n' \
    "$rps" "$p50" "$p99" "$rss" "$first" "${non2xx:+, non-2xx: $non2xx}"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$spec_name" "$path" "$rps" "$p50" "$p99" "$rss" "$first" >>"$RESULTS"
}

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
OURS=$ROOT/generated/openapi.json
PETS=$ROOT/conformance/tests/fixtures/petstore-expanded.yaml
AUTH="Authorization: Bearer bench"
AGENT=/v1/agents/agent_01jh8k2m3n4p5q6r7s8t9v0w1x
run "agentplane mock" "agentplane (generated/openapi.json)" "$AGENT" "$AUTH" \
  "$AP" mock "$OURS" --port @PORT@ --no-watch
run "Prism $PRISM_VERSION" "agentplane (generated/openapi.json)" "$AGENT" "$AUTH" \
  "$PRISM" mock -h 127.0.0.1 -p @PORT@ "$OURS"
run "agentplane mock" "petstore-expanded (3.0)" /pets/1 "" \
  "$AP" mock "$PETS" --port @PORT@ --no-watch
run "Prism $PRISM_VERSION" "petstore-expanded (3.0)" /pets/1 "" \
  "$PRISM" mock -h 127.0.0.1 -p @PORT@ "$PETS"

mkdir -p bench/results
python3 - "$RESULTS" bench/results/mock "$(nproc)" "$DURATION" "$CONNECTIONS" "$THREADS" "$(date -u +%Y-%m-%d)" "$LOAD" <<'PY'
import sys, html
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
out, cpus, duration, conns, threads, day, load = sys.argv[2:9]
specs = []
for r in rows:
    if r[1] not in specs:
        specs.append(r[1])
md = [f"# agentplane mock vs Stoplight Prism, {day}\n",
      f"Same spec, same operation, same load: `wrk -t{threads} -c{conns} -d{duration}s --latency` "
      f"after a 3 s warm-up, on loopback, {cpus} CPUs shared by the servers, wrk and whatever else "
      "the machine runs. RSS is the whole process tree after the load; *first answer* is the time "
      "from process start to the first 2xx. Both serve their static answer (the spec's example). "
      f"Load average before the runs: {load} (other work on the machine makes every figure "
      "noisier, the ratios less so). Produced by `bench/mock.sh`; not a test.\n"]
for spec in specs:
    mine = [r for r in rows if r[1] == spec]
    md.append(f"\n## {spec}: `GET {mine[0][2]}`\n")
    md.append("| server | requests/s | p50 (ms) | p99 (ms) | RSS (MiB) | first answer (ms) |")
    md.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in mine:
        md.append(f"| {r[0]} | {float(r[3]):,.0f} | {r[4]} | {r[5]} | {r[6]} | {r[7]} |")
    if len(mine) == 2:
        a, p = mine
        ratio = float(a[3]) / float(p[3]) if float(p[3]) else float("inf")
        mem = float(a[6]) / float(p[6]) if float(p[6]) else 0
        md.append(f"\nagentplane mock: **{ratio:.1f}x** Prism's throughput (target 20x), p99 "
                  f"{a[5]} ms vs {p[5]} ms (target lower), memory **{mem:.2f}x** Prism's "
                  f"(target under 0.2x), first answer {a[7]} ms (target under 100 ms).")
open(out + ".md", "w").write("\n".join(md) + "\n")
# SVG: requests/s per spec, one bar per server, log-free linear scale per group.
w, bar, gap, top = 720, 26, 14, 40
height = top + len(specs) * (2 * bar + 3 * gap) + 20
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">',
       f'<text x="10" y="22" font-size="15" font-weight="bold">agentplane mock vs Prism: requests per second ({day})</text>']
y = top
for spec in specs:
    mine = [r for r in rows if r[1] == spec]
    peak = max(float(r[3]) for r in mine) or 1
    svg.append(f'<text x="10" y="{y + 12}" font-weight="bold">{html.escape(spec)}</text>')
    y += gap + 4
    for r in mine:
        length = (w - 330) * float(r[3]) / peak
        color = "#2f6fdf" if r[0].startswith("agentplane") else "#999"
        svg.append(f'<text x="10" y="{y + bar * 0.7:.0f}">{html.escape(r[0])}</text>')
        svg.append(f'<rect x="150" y="{y}" width="{max(length, 1):.1f}" height="{bar}" fill="{color}"/>')
        svg.append(f'<text x="{155 + length:.0f}" y="{y + bar * 0.7:.0f}">{float(r[3]):,.0f}/s, p99 {r[5]} ms, {r[6]} MiB</text>')
        y += bar + 4
    y += gap * 2
svg.append("</svg>")
open(out + ".svg", "w").write("\n".join(svg) + "\n")
print(open(out + ".md").read())
PY
