#!/usr/bin/env bash
# Recall on servers nobody here wrote (issue 20): Stoplight Prism mocks four public specs,
# and Schemathesis and `agentplane conform` each test every mock with the same number of
# examples and the same credentials. Prism is started afresh for each tool (one crash must
# not cost the other tool its run) on a port the OS hands out. Writes
# bench/results/recall-<date>.md: the distinct findings of each tool by check and operation
# (an undocumented method is keyed by its path, as the tools name different methods), what
# only one of them found, and each tool's messages. Not a test and not run in CI: Prism's
# answers are random, so the figures move a little from run to run.
#
#   bench/recall.sh
#   NAME=2026-12-05-after bench/recall.sh   # writes recall-2026-12-05-after.md (default: the date)
#   MAX_EXAMPLES=50 AGENTPLANE=target/debug/agentplane bench/recall.sh
#
# Tools: Prism and the spec collection @readme/oas-examples are installed from npm into
# $RECALL_TOOLS (a temp dir by default, kept between runs); Schemathesis is .tools/venv's
# (scripts/test.sh installs it). The fourth spec is our fixture of the OpenAPI Initiative's
# petstore-expanded example.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PRISM_VERSION=5.16.0
EXAMPLES_VERSION=8.2.2
TOOLS=${RECALL_TOOLS:-/tmp/agentplane-recall-tools}
MAX_EXAMPLES=${MAX_EXAMPLES:-25}
SCHEMATHESIS=${SCHEMATHESIS:-$ROOT/.tools/venv/bin/schemathesis}
WORK=$(mktemp -d /tmp/agentplane-bench-recall.XXXXXX)
PRISM_PID=
cleanup() { [ -n "$PRISM_PID" ] && kill "$PRISM_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
now() { python3 -c 'import time; print(time.monotonic())'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
[ -x "$SCHEMATHESIS" ] || { echo "no schemathesis at $SCHEMATHESIS (scripts/test.sh installs it)" >&2; exit 1; }

PRISM=$TOOLS/node_modules/.bin/prism
EXAMPLES=$TOOLS/node_modules/@readme/oas-examples
if [ ! -x "$PRISM" ] || ! "$PRISM" --version 2>/dev/null | grep -q "$PRISM_VERSION" || [ ! -d "$EXAMPLES" ]; then
  echo "==> installing @stoplight/prism-cli@$PRISM_VERSION and @readme/oas-examples@$EXAMPLES_VERSION into $TOOLS"
  mkdir -p "$TOOLS"
  [ -f "$TOOLS/package.json" ] || echo '{"private": true}' >"$TOOLS/package.json"
  (cd "$TOOLS" && npm install --silent --no-audit --no-fund \
    "@stoplight/prism-cli@$PRISM_VERSION" "@readme/oas-examples@$EXAMPLES_VERSION")
fi

if [ -z "${AGENTPLANE:-}" ]; then
  echo "==> building (release)"
  cargo build --release --quiet --bin agentplane
  AGENTPLANE=${CARGO_TARGET_DIR:-$ROOT/target}/release/agentplane
fi

# name and path of each spec
SPECS=(
  "petstore-expanded $ROOT/conformance/tests/fixtures/petstore-expanded.yaml"
  "petstore-3.0 $EXAMPLES/3.0/json/petstore.json"
  "uspto $EXAMPLES/3.0/json/uspto.json"
  "train-travel-3.1 $EXAMPLES/3.1/json/train-travel.json"
)
# Credentials for every scheme these specs use (Prism only checks that they are there).
HEADERS=(-H "Authorization: Bearer recall" -H "api_key: recall")

# start_prism SPEC: starts Prism on a free port, waits until it listens, sets PORT.
start_prism() {
  PORT=$(free_port)
  "$PRISM" mock -h 127.0.0.1 -p "$PORT" "$1" >"$WORK/prism.log" 2>&1 &
  PRISM_PID=$!
  for _ in $(seq 1 300); do
    grep -q "Prism is listening" "$WORK/prism.log" 2>/dev/null && return 0
    kill -0 "$PRISM_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$WORK/prism.log" >&2
  echo "Prism did not start on $1" >&2
  exit 1
}
# stop_prism OUT: stops Prism; writes "crashed" to OUT when it had died during the run.
stop_prism() {
  if kill -0 "$PRISM_PID" 2>/dev/null; then
    kill "$PRISM_PID" 2>/dev/null || true
    wait "$PRISM_PID" 2>/dev/null || true
    echo running >"$1"
  else
    echo crashed >"$1"
    cp "$WORK/prism.log" "$1.log"
  fi
  PRISM_PID=
}

mkdir -p "$WORK/out"
for entry in "${SPECS[@]}"; do
  name=${entry%% *}
  spec=${entry#* }
  [ -f "$spec" ] || { echo "missing spec $spec" >&2; exit 1; }

  echo "==> $name: Schemathesis $("$SCHEMATHESIS" --version | awk '{print $NF}')"
  start_prism "$spec"
  start=$(now)
  set +e
  "$SCHEMATHESIS" run "$spec" --url "http://127.0.0.1:$PORT" "${HEADERS[@]}" \
    --checks all --phases examples,coverage,fuzzing,stateful --mode all \
    --max-examples "$MAX_EXAMPLES" --seed 1 --suppress-health-check all --no-color \
    --report json,junit --report-json-path "$WORK/out/$name-st.json" \
    --report-junit-path "$WORK/out/$name-st.xml" >"$WORK/out/$name-st.out" 2>&1
  set -e
  python3 -c "print($(now) - $start)" >"$WORK/out/$name-st.secs"
  stop_prism "$WORK/out/$name-st.prism"
  tail -n 3 "$WORK/out/$name-st.out"

  echo "==> $name: agentplane conform"
  start_prism "$spec"
  start=$(now)
  set +e
  "$AGENTPLANE" conform --spec "$spec" --url "http://127.0.0.1:$PORT" "${HEADERS[@]}" \
    --seed 1 --max-examples "$MAX_EXAMPLES" --report "$WORK/out/$name-ap.json" \
    >"$WORK/out/$name-ap.out" 2>"$WORK/out/$name-ap.err"
  set -e
  python3 -c "print($(now) - $start)" >"$WORK/out/$name-ap.secs"
  stop_prism "$WORK/out/$name-ap.prism"
  tail -n 2 "$WORK/out/$name-ap.out"
done

mkdir -p bench/results
STAMP=${NAME:-$(date -u +%Y-%m-%d)}
OUT=bench/results/recall-$STAMP.md
python3 - "$WORK/out" "$OUT" "$MAX_EXAMPLES" "$PRISM_VERSION" \
  "$("$SCHEMATHESIS" --version | awk '{print $NF}')" "${SPECS[@]%% *}" <<'PY'
import json, os, re, sys
import xml.etree.ElementTree as ET

out_dir, out, examples, prism, st_version, *names = sys.argv[1:]

# Schemathesis's failure types, by the check that reports them (the names conform uses).
ST_CHECKS = {
    "ServerError": "not_a_server_error",
    "UndefinedStatusCode": "status_code_conformance",
    "UndefinedContentType": "content_type_conformance",
    "MalformedMediaType": "content_type_conformance",
    "MissingContentType": "content_type_conformance",
    "MissingHeaders": "response_headers_conformance",
    "JsonSchemaError": "response_schema_conformance",
    "MalformedJson": "response_schema_conformance",
    "AcceptedNegativeData": "negative_data_rejection",
    "RejectedPositiveData": "positive_data_acceptance",
    "IgnoredAuth": "ignored_auth",
    "UseAfterFree": "use_after_free",
    "EnsureResourceAvailability": "ensure_resource_availability",
    "MissingHeaderNotRejected": "missing_required_header",
    "UnsupportedMethodResponse": "unsupported_method",
    "ResponseTimeExceeded": "max_response_time",
}

def key(check, operation):
    # Undocumented methods: each tool picks its own (TRACE, PATCH, ...); the path is the finding.
    if check == "unsupported_method":
        return (check, operation.split(" ", 1)[-1])
    # Schemathesis names its stateful findings "Stateful tests", not the operation.
    if check in ("use_after_free", "ensure_resource_availability"):
        return (check, "(stateful chain)")
    return (check, operation)

def schemathesis(name):
    path = os.path.join(out_dir, f"{name}-st.json")
    found = {}
    if not os.path.exists(path):
        return found, 0
    report = json.load(open(path))
    for failure in report.get("failures", []):
        check = ST_CHECKS.get(failure.get("type"), failure.get("type") or failure.get("title"))
        for op in failure.get("operations", []):
            found.setdefault(key(check, op), []).append(failure.get("title", ""))
    # The messages, from the JUnit report (one test case per operation).
    try:
        root = ET.parse(os.path.join(out_dir, f"{name}-st.xml")).getroot()
        for case in root.iter("testcase"):
            op = case.get("name", "")
            for f in list(case.iter("failure")) + list(case.iter("error")):
                text = (f.get("message") or f.text or "").strip()
                if "Network Error" in text:
                    # No answer (a timeout or a dropped connection): conform's network_error.
                    found.setdefault(("network_error", op), [])
                for (check, where), msgs in found.items():
                    if where in (op, op.split(" ", 1)[-1]) and len(msgs) < 4:
                        first = re.sub(r"\s+", " ", text)[:300]
                        if first and first not in msgs:
                            msgs.append(first)
    except (OSError, ET.ParseError):
        pass
    return found, report.get("test_cases", {}).get("generated", 0)

def conform(name):
    path = os.path.join(out_dir, f"{name}-ap.json")
    found = {}
    if not os.path.exists(path):
        return found, 0
    report = json.load(open(path))
    for f in report.get("failures", []):
        found.setdefault(key(f["check"], f["operation"]), []).append(
            f"{f.get('status') or '-'}: {f['message'][:300]}")
    return found, report.get("requests", 0)

def crashed(name, tool):
    p = os.path.join(out_dir, f"{name}-{tool}.prism")
    return os.path.exists(p) and open(p).read().strip() == "crashed"

def secs(name, tool):
    try:
        return float(open(os.path.join(out_dir, f"{name}-{tool}.secs")).read())
    except (OSError, ValueError):
        return 0.0

lines = [f"# Recall on Prism mocks: Schemathesis vs agentplane conform, {out.rsplit('recall-', 1)[-1][:-3]}", "",
         f"Stoplight Prism {prism} mocks each spec (started afresh for each tool); Schemathesis {st_version} "
         f"(`--checks all --phases examples,coverage,fuzzing,stateful --mode all`) and `agentplane conform` "
         f"(all phases and checks) send {examples} examples per operation and phase, seed 1, the same credentials. "
         "A finding is one (check, operation) pair, counted once however many requests showed it; "
         "`unsupported_method` is keyed by path. `bench/recall.sh` wrote this file; the verdicts "
         "below the tables are added by hand.", "",
         "| spec | Schemathesis findings | conform findings | both | only Schemathesis | only conform | Schemathesis cases / s | conform requests / s |",
         "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
details = []
totals = [0, 0, 0, 0, 0]
for name in names:
    st, st_cases = schemathesis(name)
    ap, ap_cases = conform(name)
    for tool, found in (("st", st), ("ap", ap)):
        if crashed(name, tool):
            # One finding: the requests after the crash all fail to connect.
            for k in [k for k in found if k[0] == "network_error"]:
                del found[k]
            log = os.path.join(out_dir, f"{name}-{tool}.prism.log")
            why = [l.strip() for l in open(log, errors="replace")] if os.path.exists(log) else []
            why = [l for l in why if "Error" in l and "at " not in l[:3]][:1]
            found[("mock_crashed", "(Prism's process died)")] = why or ["Prism exited"]
    both = sorted(set(st) & set(ap))
    only_st = sorted(set(st) - set(ap))
    only_ap = sorted(set(ap) - set(st))
    row = [len(st), len(ap), len(both), len(only_st), len(only_ap)]
    totals = [a + b for a, b in zip(totals, row)]
    st_s, ap_s = secs(name, "st"), secs(name, "ap")
    lines.append(f"| {name} | " + " | ".join(map(str, row))
                 + f" | {st_cases} in {st_s:.0f} s | {ap_cases} in {ap_s:.0f} s |")
    details.append(f"\n## {name}\n")
    details.append("| check | operation | Schemathesis | conform |")
    details.append("| --- | --- | :---: | :---: |")
    for k in sorted(set(st) | set(ap)):
        details.append(f"| `{k[0]}` | `{k[1]}` | {'✓' if k in st else '—'} | {'✓' if k in ap else '—'} |")
    for label, found in (("Schemathesis", st), ("conform", ap)):
        if found:
            details.append(f"\n{label}'s messages:\n")
            for k in sorted(found):
                msgs = "; ".join(m.replace("|", "\\|").replace("\n", " ") for m in found[k][:3])
                details.append(f"- `{k[0]}` `{k[1]}`: {msgs}")
lines.append("| **total** | " + " | ".join(f"**{t}**" for t in totals) + " | | |")
lines += details
text = "\n".join(lines) + "\n"
# A request that showed a fault may carry a NUL or other control characters: shown escaped.
text = "".join(c if c == "\n" or ord(c) >= 0x20 else f"\\x{ord(c):02x}" for c in text)
with open(out, "w") as f:
    f.write(text)
print("\n".join(lines[:8 + len(names)]))
print(f"wrote {out}")
PY
