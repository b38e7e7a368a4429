//! Two replicas sharing one PostgreSQL hold one key to its hourly limit: the limit is counted
//! in memory from blocks leased from the database, within the tolerance `agentplane::ratelimit`
//! documents. PostgreSQL only (the way replicas share a database in production).

use reqwest::Method;
use serde_json::json;
use tokio::task::JoinSet;

use crate::support::{Backend, TestApp, json};

const LIMIT: i64 = 300;
const REPLICAS: i64 = 2;
/// Requests sent to each server in the storm, together well past the limit.
const PER_SERVER: usize = 210;
const CONCURRENCY: usize = 6;

/// What one answer said: its status and rate-limit headers.
struct Answer {
    status: u16,
    limit: Option<i64>,
    remaining: Option<i64>,
    retry_after: Option<i64>,
}

async fn send(client: &reqwest::Client, base: &str, key: &str) -> Answer {
    let resp = client
        .get(format!("{base}/v1/agents?per_page=1"))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    Answer {
        status: resp.status().as_u16(),
        limit: header("x-ratelimit-limit"),
        remaining: header("x-ratelimit-remaining"),
        retry_after: header("retry-after"),
    }
}

/// `PER_SERVER` requests to `base`, `CONCURRENCY` at a time.
async fn storm(client: &reqwest::Client, base: &str, key: &str) -> Vec<Answer> {
    let mut tasks = JoinSet::new();
    for worker in 0..CONCURRENCY {
        let (client, base, key) = (client.clone(), base.to_string(), key.to_string());
        tasks.spawn(async move {
            let mut answers = Vec::new();
            for _ in (worker..PER_SERVER).step_by(CONCURRENCY) {
                answers.push(send(&client, &base, &key).await);
            }
            answers
        });
    }
    let mut answers = Vec::new();
    while let Some(done) = tasks.join_next().await {
        answers.extend(done.expect("join"));
    }
    answers
}

fn passed(answers: &[Answer]) -> i64 {
    let mut passed = 0;
    for a in answers {
        assert_eq!(a.limit, Some(LIMIT), "every answer carries the limit");
        let remaining = a.remaining.expect("X-RateLimit-Remaining");
        assert!((0..LIMIT).contains(&remaining), "{remaining}");
        match a.status {
            200 => passed += 1,
            429 => {
                let wait = a.retry_after.expect("a 429 carries Retry-After");
                assert!((1..=3600).contains(&wait), "{wait}");
                assert_eq!(remaining, 0);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    passed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_hold_a_key_of_300_an_hour_within_the_tolerance() {
    let Some(app) = TestApp::start(Backend::Postgres).await else {
        eprintln!("skipped: set AGENTPLANE_TEST_POSTGRES to run on PostgreSQL");
        return;
    };
    let replica = app.replica().await;
    let resp = app
        .send_json(
            Method::POST,
            "/v1/auth/keys",
            &json!({"name": "limited", "scopes": ["read:agents"],
                    "rate_limit": {"requests_per_hour": LIMIT}}),
        )
        .await;
    let (status, body) = json(resp).await;
    assert_eq!(status, 201, "{body}");
    let key = body["key"].as_str().expect("key").to_string();

    // Both servers at once, well past the limit.
    let (first, second) = tokio::join!(
        storm(&app.client, &app.base, &key),
        storm(&app.client, &replica.base, &key)
    );
    let storm_passed = passed(&first) + passed(&second);
    let lease = agentplane::ratelimit::max_lease(LIMIT);
    let tolerance = (REPLICAS - 1) * (lease - 1);
    assert!(
        (LIMIT - tolerance..=LIMIT).contains(&storm_passed),
        "{storm_passed} passed of {LIMIT} (tolerance {tolerance})"
    );

    // What the replicas still hold serves the key until each is refused; then exactly the
    // limit has passed, and both go on refusing.
    let mut drained = Vec::new();
    for base in [&app.base, &replica.base] {
        for _ in 0..=lease {
            drained.push(send(&app.client, base, &key).await);
        }
    }
    assert_eq!(storm_passed + passed(&drained), LIMIT);
    for base in [&app.base, &replica.base] {
        assert_eq!(send(&app.client, base, &key).await.status, 429, "{base}");
    }

    // One security event for the window, whichever replica was refused first.
    let (status, events) = json(
        app.get("/v1/security/events?type=rate_limit_exceeded")
            .await,
    )
    .await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(events["pagination"]["total"], 1, "{events}");
}
