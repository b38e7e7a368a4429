"""Prints schemathesis.toml plus one [[operations]] entry per operation that declares
`x-business-rule-statuses` (a 422 for a missing template variable, say): schema-valid input
may get those statuses, as `agentplane conform` reads from the spec itself.

    python3 scripts/schemathesis_config.py schemathesis.toml generated/openapi.json > st.toml

Used by scripts/test.sh and bench/conform.sh, so the benchmark runs Schemathesis as CI does.
"""
import json, re, sys
base = open(sys.argv[1]).read()
print(base)
accepted = json.loads(re.search(r"expected-statuses = (\[.*\])", base).group(1))
# A followed log (`follow=true`) never ends by itself: Schemathesis reads an event stream
# until its request timeout, so that operation gets a short one.
endless = {"getAgentLogs": 2}
for item in json.load(open(sys.argv[2]))["paths"].values():
    for op in item.values():
        if not isinstance(op, dict) or "operationId" not in op:
            continue
        extra = op.get("x-business-rule-statuses")
        timeout = endless.get(op["operationId"])
        if extra or timeout:
            print("[[operations]]")
            print(f'include-operation-id = "{op["operationId"]}"')
        if extra:
            statuses = accepted + [str(s) for s in extra]
            print(f"checks.positive_data_acceptance.expected-statuses = {json.dumps(statuses)}")
        if timeout:
            print(f"request-timeout = {timeout}")
        if extra or timeout:
            print()
