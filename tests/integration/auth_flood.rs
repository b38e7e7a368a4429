//! A flood of bad API keys from one address costs nothing durable: its failures are summed
//! into a few security events, and past the limit it is refused (429) before any lookup,
//! while a key the server knows keeps working.

use std::time::Duration;

use agentplane::security::failures::FailurePolicy;
use reqwest::Method;
use serde_json::Value;

use crate::support::{Backend, TestApp};

/// The `authentication_failed` rows written so far, as `(message, details)`.
async fn failure_rows(app: &TestApp) -> Vec<(String, Value)> {
    use agentplane::db::schema::security_events as e;
    use diesel::prelude::*;
    let rows: Vec<(String, String)> = app
        .store
        .run(|conn| {
            let q = e::table
                .filter(e::event_type.eq("authentication_failed"))
                .order(e::created_at.asc())
                .select((e::message, e::details));
            Ok(q.load(conn)?)
        })
        .await
        .expect("security events");
    rows.into_iter()
        .map(|(m, d)| (m, serde_json::from_str(&d).unwrap_or(Value::Null)))
        .collect()
}

/// Sends `n` requests with distinct unknown keys, 16 at a time; their statuses and the
/// `Retry-After` of each 429.
async fn flood(app: &TestApp, n: usize) -> Vec<(u16, Option<u64>)> {
    let mut answers = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let sends = chunk.iter().map(|i| {
            app.as_key(&format!("ap_flood{i:034}"), Method::GET, "/v1/agents")
                .send()
        });
        for resp in futures_util::future::join_all(sends).await {
            let resp = resp.expect("an answer");
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            answers.push((resp.status().as_u16(), wait));
        }
    }
    answers
}

async fn a_flood_of_bad_keys_is_summed_and_refused(backend: Backend) {
    let policy = FailurePolicy {
        per_window: 20,
        window: Duration::from_secs(60),
    };
    let Some(app) = TestApp::start_with(backend, |c| c.auth_failures = policy).await else {
        return;
    };
    // The admin key is known (cached) before the flood.
    assert_eq!(app.get("/v1/agents").await.status(), 200);

    let answers = flood(&app, 500).await;
    let refused_early = answers.iter().filter(|(s, _)| *s == 401).count();
    let throttled: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert!(
        (20..=36).contains(&refused_early),
        "20 failures (and those in flight with them) get their 401: {refused_early}"
    );
    assert_eq!(
        refused_early + throttled.len(),
        500,
        "nothing else: {answers:?}"
    );
    assert!(
        throttled
            .iter()
            .all(|(_, wait)| wait.is_some_and(|w| (1..=60).contains(&w))),
        "every 429 says when to come back"
    );
    let health = app
        .as_key("ap_flood_health", Method::GET, "/v1/health")
        .send()
        .await;
    let health = health.expect("an answer").status();
    assert_eq!(
        health, 200,
        "operations without credentials are never refused (no 429 there)"
    );
    let resp = app.get("/v1/agents").await;
    assert_eq!(
        resp.status(),
        200,
        "a known key from the same address still works"
    );

    // One row for the first failure; the rest wait for the window's summary.
    let rows = failure_rows(&app).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1["reason"], "unknown API key");
    assert_eq!(rows[0].1["source"], "127.0.0.1");
    let body = resp.text().await.unwrap_or_default();
    assert!(!body.contains("ap_flood"));
}

async fn the_window_ends_in_one_summary(backend: Backend) {
    let policy = FailurePolicy {
        per_window: 5,
        window: Duration::from_millis(1500),
    };
    let Some(app) = TestApp::start_with(backend, |c| c.auth_failures = policy).await else {
        return;
    };
    let answers = flood(&app, 40).await;
    assert!(answers.iter().any(|(s, _)| *s == 429), "{answers:?}");
    // The flusher writes the summary once the window has ended, with nobody asking.
    let mut rows = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rows = failure_rows(&app).await;
        if rows.len() >= 2 {
            break;
        }
    }
    assert_eq!(
        rows.len(),
        2,
        "the first failure, then one summary: {rows:?}"
    );
    let (message, summary) = &rows[1];
    assert_eq!(
        summary["count"], 39,
        "every other failure and refusal: {summary}"
    );
    assert!(message.starts_with("39 more failed authentications from 127.0.0.1"));
    let prefixes = summary["key_prefixes"].as_array().expect("prefixes");
    assert!(!prefixes.is_empty() && prefixes.len() <= 5, "{summary}");
    assert!(
        prefixes
            .iter()
            .all(|p| p.as_str().is_some_and(|p| p.len() <= 7)),
        "prefixes only, never a key: {summary}"
    );
    assert!(summary["reasons"]["too many failed authentications"].as_u64() > Some(0));

    // A new window: the source may try again.
    assert_eq!(flood(&app, 1).await[0].0, 401);
}

crate::both!(
    a_flood_of_bad_keys_is_summed_and_refused_on_both_backends,
    a_flood_of_bad_keys_is_summed_and_refused
);
crate::both!(
    the_window_ends_in_one_summary_on_both_backends,
    the_window_ends_in_one_summary
);
