//! progenitor compiles each `pattern` of the spec with `regress` inside a `LazyLock` and
//! unwraps the result (see the `allow` in `src/lib.rs`). This test compiles every pattern in
//! `generated/openapi-3.0.json` the same way, so a pattern regress cannot read fails here, in
//! CI, instead of panicking in a consumer's process.

use serde_json::Value;

fn patterns(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                match (key.as_str(), child) {
                    ("pattern", Value::String(p)) => out.push((here, p.clone())),
                    _ => patterns(child, &here, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                patterns(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_spec_pattern_compiles_with_regress() {
    // cargo sets CARGO_MANIFEST_DIR when it runs a test, for the checkout being tested.
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
    let path = format!("{dir}/../../generated/openapi-3.0.json");
    let text = std::fs::read_to_string(path).expect("read the 3.0 spec");
    let spec: Value = serde_json::from_str(&text).expect("the 3.0 spec is JSON");
    let mut found = Vec::new();
    patterns(&spec, "#", &mut found);
    assert!(
        !found.is_empty(),
        "the spec has patterns (ids, text columns)"
    );
    let broken: Vec<String> = found
        .iter()
        .filter_map(|(at, p)| {
            regress::Regex::new(p)
                .err()
                .map(|e| format!("{at}: {p}: {e}"))
        })
        .collect();
    assert!(
        broken.is_empty(),
        "patterns regress cannot compile:\n{}",
        broken.join("\n")
    );
}

#[test]
fn a_pattern_checked_field_rejects_what_the_spec_forbids() {
    // An agent id is `^[A-Za-z0-9_-]{1,64}$`: the generated newtype refuses a slash, so the
    // client cannot even send a request the server would answer with 400.
    let bad = agentplane_client::types::GetAgentAgentId::try_from("a/b".to_string());
    assert!(bad.is_err());
    let good = agentplane_client::types::GetAgentAgentId::try_from("agent_1".to_string());
    assert!(good.is_ok());
}
