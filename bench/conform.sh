#!/usr/bin/env bash
# Benchmarks `agentplane conform` against Schemathesis: both run the fuzzing phase with the
# same number of examples on the same spec and the same fresh agentplane server (release
# build, SQLite in a temp dir, loopback). Writes bench/results/conform-<date>.md with the
# test cases, wall time and cases per second of each, and an SVG bar chart. Not a test and
# not run in CI: the numbers vary with the machine. DESIGN.md budgets the cases/s ratio.
#
#   bench/conform.sh
#   NAME=2026-12-05-after bench/conform.sh  # writes conform-2026-12-05-after.md (default: the date)
#   MAX_EXAMPLES=100 bench/conform.sh
#   AGENTPLANE=/path/to/release/agentplane bench/conform.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MAX_EXAMPLES=${MAX_EXAMPLES:-40}
SCHEMATHESIS=${SCHEMATHESIS:-$ROOT/.tools/venv/bin/schemathesis}
WORK=$(mktemp -d /tmp/agentplane-bench-conform.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
[ -x "$SCHEMATHESIS" ] || { echo "no schemathesis at $SCHEMATHESIS (scripts/test.sh installs it)" >&2; exit 1; }

# AGENTPLANE=<binary> skips the build (a release build of the same tree).
if [ -z "${AGENTPLANE:-}" ]; then
  echo "==> building (release)"
  cargo build --release --quiet --bin agentplane
  AGENTPLANE=./target/release/agentplane
fi

echo "==> starting agentplane on SQLite (a port the OS picks)"
AGENTPLANE_LOG=warn "$AGENTPLANE" serve --listen "127.0.0.1:0" \
  --database "sqlite://$WORK/bench.db" >"$WORK/ap.out" 2>"$WORK/ap.err" &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q listening "$WORK/ap.out" 2>/dev/null && break; sleep 0.1; done
KEY=$(grep -o 'ap_[A-Za-z0-9]*' "$WORK/ap.out" | head -n1)
ADDR=$(grep -o 'listening on http://[0-9.:]*' "$WORK/ap.out" | head -n1 | sed 's|.*http://||')
[ -n "$ADDR" ] || { cat "$WORK/ap.err"; echo "the server did not say where it listens" >&2; exit 1; }
[ -n "$KEY" ] || { cat "$WORK/ap.err"; echo "no admin key printed" >&2; exit 1; }
SPEC="http://$ADDR/openapi.json"
BASE="http://$ADDR"

now() { python3 -c 'import time; print(time.monotonic())'; }

echo "==> schemathesis $("$SCHEMATHESIS" --version | awk '{print $NF}') --phases fuzzing --max-examples $MAX_EXAMPLES"
start=$(now)
set +e
python3 scripts/schemathesis_config.py schemathesis.toml generated/openapi.json >"$WORK/schemathesis.toml"
"$SCHEMATHESIS" --config-file "$WORK/schemathesis.toml" run "$SPEC" --url "$BASE" -H "Authorization: Bearer $KEY" \
  --checks all --phases fuzzing --mode all --max-examples "$MAX_EXAMPLES" --seed 1 \
  --suppress-health-check all --no-color \
  --report junit --report-dir "$WORK/schemathesis" >"$WORK/st.out" 2>&1
st_rc=$?
set -e
end=$(now)
st_secs=$(python3 -c "print($end - $start)")
st_cases=$(grep -oE '[0-9]+ generated' "$WORK/st.out" | tail -n1 | awk '{print $1}')
tail -n 15 "$WORK/st.out"
[ -n "$st_cases" ] || { echo "no 'N generated' in the Schemathesis summary" >&2; exit 1; }

echo "==> agentplane conform --phases fuzzing --max-examples $MAX_EXAMPLES"
start=$(now)
set +e
"$AGENTPLANE" conform --spec "$SPEC" --url "$BASE" -H "Authorization: Bearer $KEY" \
  --phases fuzzing --seed 1 --max-examples "$MAX_EXAMPLES" \
  --junit "$WORK/conform.xml" --report "$WORK/conform.json" >"$WORK/ap-conform.out" 2>"$WORK/ap-conform.err"
ap_rc=$?
set -e
end=$(now)
ap_secs=$(python3 -c "print($end - $start)")
ap_cases=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['requests'])" "$WORK/conform.json")
tail -n 3 "$WORK/ap-conform.out"

mkdir -p bench/results
STAMP=${NAME:-$(date -u +%Y-%m-%d)}
python3 - "bench/results/conform-$STAMP" "$MAX_EXAMPLES" "$(nproc)" \
  "Schemathesis $("$SCHEMATHESIS" --version | awk '{print $NF}')" "$st_cases" "$st_secs" "$st_rc" \
  "agentplane conform" "$ap_cases" "$ap_secs" "$ap_rc" <<'PY'
import sys, html
out, examples, cpus = sys.argv[1], sys.argv[2], sys.argv[3]
rows = []
for i in (4, 8):
    name, cases, secs, rc = sys.argv[i], int(sys.argv[i + 1]), float(sys.argv[i + 2]), sys.argv[i + 3]
    rows.append((name, cases, secs, cases / secs if secs > 0 else 0.0, rc))
base = rows[0][3]
with open(out + ".md", "w") as f:
    f.write(f"# agentplane conform vs Schemathesis, {out.rsplit('/', 1)[-1].removeprefix('conform-')}\n\n")
    f.write(f"Both on the same fresh `agentplane serve` (release build, SQLite, loopback, {cpus} CPUs), "
            f"the spec it publishes, `--phases fuzzing --max-examples {examples} --seed 1`. "
            "Schemathesis: the configuration CI gives it (`schemathesis.toml` and the spec's business-rule statuses, "
            "`scripts/schemathesis_config.py`), `--checks all --mode all --suppress-health-check all` (positive and negative data, 1 worker). "
            "agentplane conform: defaults (all checks, positive data in this phase, 4 workers). "
            "Schemathesis runs first, so conform meets the data it created. Wall time includes start-up and "
            "fetching the spec. Cases are Schemathesis's `N generated` and conform's request count, which includes "
            "one unauthenticated probe per secured operation (`ignored_auth`); Schemathesis's extra requests for "
            "its own checks are not in its count. Exit codes: 0 all passed, 1 failures found.\n\n")
    f.write("| tool | cases | seconds | cases/s | ratio | exit |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
    for name, cases, secs, cps, rc in rows:
        f.write(f"| {name} | {cases:,} | {secs:.2f} | {cps:,.1f} | {cps / base if base else 0:.2f} | {rc} |\n")
width, bar_h, gap, left = 720, 28, 14, 220
top = max(r[3] for r in rows) or 1.0
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{len(rows) * (bar_h + gap) + 40}" font-family="sans-serif" font-size="13">',
       '<text x="10" y="18" font-weight="bold">test cases per second, fuzzing phase (higher is better)</text>']
for i, (name, _, _, cps, _) in enumerate(rows):
    y = 30 + i * (bar_h + gap)
    w = (width - left - 90) * cps / top
    svg.append(f'<text x="10" y="{y + 19}">{html.escape(name)}</text>')
    svg.append(f'<rect x="{left}" y="{y}" width="{w:.0f}" height="{bar_h}" fill="{"#888" if i == 0 else "#3b7dd8"}"/>')
    svg.append(f'<text x="{left + w + 6:.0f}" y="{y + 19}">{cps:,.1f}</text>')
svg.append("</svg>")
open(out + ".svg", "w").write("\n".join(svg) + "\n")
print(open(out + ".md").read())
PY
