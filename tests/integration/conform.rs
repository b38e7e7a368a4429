//! The conformance harness against a fresh agentplane: every phase, every check, the spec
//! the server itself publishes.

use agentplane_api::models::Role;
use conformance::runner::{self, Config};

use crate::support::TestApp;

/// Failures the harness finds in agentplane today, as (operation, check), each waiting on a
/// server or spec change. A failure not listed here fails the test; so does a listed one
/// that no longer occurs, so the list cannot go stale.
const KNOWN: &[(&str, &str)] = &[];

/// Operations the harness skips, each with the reason it gives (JSON, URL-encoded,
/// multipart and raw string bodies are all generated: none today).
const SKIPPED: &[(&str, &str)] = &[];

/// The harness against a fresh server on `backend`. Outbound calls give up after 2 s, as in
/// `scripts/test.sh`: a tool at an address this machine cannot reach (the spec's example,
/// api.example.com) must fail well within the harness's 10 s wait for an answer, also on a
/// loaded machine (under load one `POST /v1/tools/{id}/test` once took longer: network_error).
async fn conform_run(backend: crate::support::Backend) {
    let egress = agentplane::egress::Policy::with_loopback(std::time::Duration::from_secs(2));
    let Some(app) = TestApp::start_with(backend, |c| c.egress = egress).await else {
        return;
    };
    let doc: serde_json::Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("spec")
        .json()
        .await
        .expect("JSON spec");
    let mut config = Config::new(app.base.clone());
    config.headers = vec![("Authorization".into(), format!("Bearer {}", app.admin_key))];
    // An admin of another organization: `cross_tenant_isolation` uses it on what the main
    // identity created.
    let other = app.key_for("other-org", "eve", Role::Admin, None).await;
    config.other_headers = vec![("Authorization".into(), format!("Bearer {other}"))];
    config.seed = 20_260_101;
    config.max_examples = 25;
    config.workers = 2;
    let report = runner::run(&doc, config)
        .await
        .expect("the published spec is usable");
    let summary = conformance::report::summary(&report);
    let unexpected: Vec<_> = report
        .failures
        .iter()
        .filter(|f| !KNOWN.contains(&(f.operation.as_str(), f.check.as_str())))
        .collect();
    assert!(unexpected.is_empty(), "{summary}");
    for (operation, check) in KNOWN {
        assert!(
            report
                .failures
                .iter()
                .any(|f| f.operation == *operation && f.check == *check),
            "{operation} [{check}] no longer fails: remove it from KNOWN\n{summary}"
        );
    }
    assert!(report.cases > 100, "{summary}");
    for check in [
        "cross_tenant_isolation",
        "conditional_requests",
        "read_after_write",
        "pagination_totals",
    ] {
        let passed: usize = report
            .operations
            .iter()
            .filter_map(|o| o.checks.get(check))
            .map(|c| c.passed)
            .sum();
        assert!(passed > 0, "{check} never passed\n{summary}");
    }
    for o in &report.operations {
        let expected_skip = SKIPPED
            .iter()
            .find(|(op, _)| *op == o.operation)
            .map(|(_, why)| *why);
        assert_eq!(
            o.skipped.as_deref(),
            expected_skip,
            "{}: skipped only as listed in SKIPPED\n{summary}",
            o.operation
        );
        assert!(
            o.cases > 0 || expected_skip.is_some(),
            "every operation is exercised\n{summary}"
        );
    }
}

crate::both!(conform_finds_no_failures, conform_run);
