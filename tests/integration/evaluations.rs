//! Evaluations: an agent over a knowledge base, run on a dataset of cases; results per case
//! and per run, runs kept for comparison.

use std::time::Duration;

use agentplane_api::models::{Role, Scope};
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, fields, json};

/// An agent answering from a small returns-policy knowledge base.
async fn support_agent(app: &TestApp) -> String {
    let (status, kb) = json(
        app.send_json(
            Method::POST,
            "/v1/knowledge",
            &json!({"name": "Policies", "sources": [
                {"type": "text", "title": "Returns", "text": "Returns are accepted within 30 days of delivery. Refunds go back to the original payment method."},
                {"type": "text", "title": "Shipping", "text": "Standard shipping takes 5 business days. Express shipping takes 2 business days."}
            ]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{kb}");
    let agent = app
        .create_agent(json!({"name": "Support", "knowledge_bases": [kb["id"]]}))
        .await;
    agent["id"].as_str().expect("id").to_string()
}

async fn finished_run(app: &TestApp, location: &str) -> Value {
    for _ in 0..200 {
        let (status, run) = json(app.get(location).await).await;
        assert_eq!(status, 200, "{run}");
        if run["status"] == "completed" || run["status"] == "failed" {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the run did not finish");
}

fn five_cases() -> Value {
    json!([
        {"input": "How many days do I have for returns?", "expected_output": "30 days"},
        {"input": "How long does express shipping take?", "expected_output": "2 business days"},
        {"input": "How long does standard shipping take?", "expected_output": "5 business days"},
        {"input": "Where do refunds go?", "expected_output": "original payment method"},
        {"input": "Do you sell gift cards?", "expected_output": "gift cards are available", "metadata": {"kind": "unanswerable"}}
    ])
}

backend_test!(
    an_agent_is_evaluated_on_five_cases_and_runs_are_kept,
    |app| {
        let agent = support_agent(&app).await;
        let (status, evaluation) = json(
        app.send_json(
            Method::POST,
            "/v1/evaluations",
            &json!({"name": "Support accuracy", "type": "agent", "target_id": agent, "test_cases": five_cases()}),
        )
        .await,
    )
    .await;
        assert_eq!(status, 201, "{evaluation}");
        let id = evaluation["id"].as_str().expect("id");
        assert_eq!(
            evaluation["pass_criteria"],
            json!({"metric": "contains", "threshold": 1.0})
        );
        assert_eq!(evaluation["latest_run_id"], Value::Null);
        assert_eq!(
            evaluation["test_cases"][4]["metadata"],
            json!({"kind": "unanswerable"})
        );
        let (status, none) = json(app.get(&format!("/v1/evaluations/{id}/results")).await).await;
        assert_eq!((status, &none["error"]["code"]), (404, &json!("NO_RUNS")));

        let resp = app
            .send_json(
                Method::POST,
                &format!("/v1/evaluations/{id}/run"),
                &json!({}),
            )
            .await;
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("Location")
            .to_string();
        let (status, queued) = json(resp).await;
        assert_eq!(status, 202, "{queued}");
        assert_eq!(queued["status"], "queued");
        let run = finished_run(&app, &location).await;
        assert_eq!(run["status"], "completed", "{run}");
        let results = run["results"].as_array().expect("results");
        assert_eq!(results.len(), 5);
        let passed: Vec<bool> = results
            .iter()
            .map(|r| r["passed"].as_bool().expect("passed"))
            .collect();
        assert_eq!(
            passed,
            vec![true, true, true, true, false],
            "the local model answers from the knowledge base; the gift-card case has no passage: {run}"
        );
        for r in results {
            assert!(r["output"].as_str().is_some_and(|o| !o.is_empty()), "{r}");
            assert!(r["input_tokens"].as_i64() > Some(0), "{r}");
            // Each case ran as an execution on the worker pool, kept like any other.
            let exec = r["execution_id"].as_str().expect("an execution per case");
            let (status, e) = json(app.get(&format!("/v1/executions/{exec}")).await).await;
            assert_eq!(
                (status, e["status"].as_str()),
                (200, Some("succeeded")),
                "{e}"
            );
            assert!(
                r["token_f1"]
                    .as_f64()
                    .is_some_and(|f| (0.0..=1.0).contains(&f))
            );
        }
        let summary = &run["summary"];
        assert_eq!(
            (
                &summary["cases"],
                &summary["passed"],
                &summary["failed"],
                &summary["errors"]
            ),
            (&json!(5), &json!(4), &json!(1), &json!(0))
        );
        assert_eq!(summary["pass_rate"], 0.8);
        assert_eq!(summary["contains_rate"], 0.8);
        assert!(summary["latency_ms"]["p50"].is_i64(), "{summary}");
        let total_input: i64 = results
            .iter()
            .filter_map(|r| r["input_tokens"].as_i64())
            .sum();
        assert_eq!(summary["tokens"]["input"], total_input);

        let (_, events) = json(app.get("/v1/events?type=evaluation.completed").await).await;
        assert_eq!(
            events["data"][0]["data"],
            json!({"evaluation_id": id, "run_id": run["id"], "status": "completed"}),
            "{events}"
        );

        // Results are the latest run; a second run is kept beside the first.
        let (_, latest) = json(app.get(&format!("/v1/evaluations/{id}/results")).await).await;
        assert_eq!(latest["id"], run["id"]);
        let (_, second) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/evaluations/{id}/run"),
                &json!({}),
            )
            .await,
        )
        .await;
        let second = finished_run(
            &app,
            &format!(
                "/v1/evaluations/{id}/runs/{}",
                second["id"].as_str().expect("id")
            ),
        )
        .await;
        assert_eq!(
            second["summary"]["passed"], 4,
            "the same agent, the same answers"
        );
        let (_, runs) = json(app.get(&format!("/v1/evaluations/{id}/runs")).await).await;
        assert_eq!(runs["pagination"]["total"], 2);
        assert_eq!(runs["data"][0]["id"], second["id"], "newest first");
        assert_eq!(runs["data"][1]["summary"], run["summary"]);
        assert_eq!(
            runs["data"][0]["results"],
            json!([]),
            "lists leave out per-case results"
        );
        let (_, got) = json(app.get(&format!("/v1/evaluations/{id}")).await).await;
        assert_eq!(got["latest_run_id"], second["id"]);
        let (_, listed) = json(app.get(&format!("/v1/evaluations?target_id={agent}")).await).await;
        assert_eq!(listed["pagination"]["total"], 1);

        // Token F1 as the criterion.
        let (_, strict) = json(
            app.send_json(
                Method::POST,
                "/v1/evaluations",
                &json!({"name": "Exact", "target_id": agent, "test_cases": five_cases(),
                    "pass_criteria": {"metric": "exact_match"}}),
            )
            .await,
        )
        .await;
        assert_eq!(
            strict["pass_criteria"],
            json!({"metric": "exact_match", "threshold": 1.0})
        );
        let (_, queued) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/evaluations/{}/run", strict["id"].as_str().expect("id")),
                &json!({}),
            )
            .await,
        )
        .await;
        let strict_run = finished_run(
            &app,
            &format!(
                "/v1/evaluations/{}/runs/{}",
                strict["id"].as_str().expect("id"),
                queued["id"].as_str().expect("id")
            ),
        )
        .await;
        assert_eq!(
            strict_run["summary"]["passed"], 0,
            "whole sentences never equal the short expectations"
        );

        let resp = app
            .req(Method::DELETE, &format!("/v1/evaluations/{id}"))
            .send()
            .await
            .expect("delete");
        assert_eq!(resp.status(), 204);
        let (status, _) = json(app.get(&format!("/v1/evaluations/{id}/runs")).await).await;
        assert_eq!(status, 404);
    }
);

backend_test!(
    a_case_the_agent_fails_on_is_a_failed_case_with_its_error,
    |app| {
        // The agent's knowledge base is deleted after it was linked (a missing one cannot be).
        let (_, kb) = json(
            app.send_json(Method::POST, "/v1/knowledge", &json!({"name": "Gone"}))
                .await,
        )
        .await;
        let agent = app
            .create_agent(json!({"name": "Broken", "knowledge_bases": [kb["id"]]}))
            .await;
        let kb_path = format!("/v1/knowledge/{}", kb["id"].as_str().expect("id"));
        let resp = app.req(Method::DELETE, &kb_path).send().await.expect("req");
        assert_eq!(resp.status(), 204);
        let (_, evaluation) = json(
        app.send_json(
            Method::POST,
            "/v1/evaluations",
            &json!({"name": "e", "target_id": agent["id"], "test_cases": [{"input": "hi", "expected_output": "hello"}]}),
        )
        .await,
    )
    .await;
        let id = evaluation["id"].as_str().expect("id");
        let (_, queued) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/evaluations/{id}/run"),
                &json!({}),
            )
            .await,
        )
        .await;
        let run = finished_run(
            &app,
            &format!(
                "/v1/evaluations/{id}/runs/{}",
                queued["id"].as_str().expect("id")
            ),
        )
        .await;
        assert_eq!(run["status"], "completed");
        assert_eq!(run["summary"]["errors"], 1);
        let case = &run["results"][0];
        assert_eq!(
            (&case["passed"], &case["output"]),
            (&json!(false), &Value::Null)
        );
        assert!(
            case["error"]
                .as_str()
                .is_some_and(|e| e.contains(kb["id"].as_str().expect("id"))),
            "{case}"
        );
    }
);

backend_test!(
    evaluations_refuse_bad_input_other_orgs_and_missing_scopes,
    |app| {
        let agent = app.create_agent(json!({"name": "a"})).await;
        let agent = agent["id"].as_str().expect("id");
        let case = json!([{"input": "q", "expected_output": "a"}]);
        for (body, field) in [
            (
                json!({"name": "e", "target_id": agent, "test_cases": []}),
                "test_cases",
            ),
            (json!({"name": "e", "target_id": agent}), "test_cases"),
            (
                json!({"name": "", "target_id": agent, "test_cases": case}),
                "name",
            ),
            (
                json!({"name": "e", "target_id": agent, "test_cases": [{"expected_output": "a"}]}),
                "input",
            ),
            (
                json!({"name": "e", "target_id": agent, "test_cases": case, "pass_criteria": {"metric": "bleu"}}),
                "metric",
            ),
            (
                json!({"name": "e", "target_id": agent, "test_cases": case, "pass_criteria": {"metric": "token_f1", "threshold": 2}}),
                "threshold",
            ),
            (
                json!({"name": "e", "target_id": "agent_nope", "test_cases": case}),
                "target_id",
            ),
        ] {
            let (status, err) =
                json(app.send_json(Method::POST, "/v1/evaluations", &body).await).await;
            assert_eq!(status, 422, "{body}: {err}");
            assert!(
                fields(&err).iter().any(|f| f.contains(field)),
                "{body}: {err}"
            );
        }

        let (_, evaluation) = json(
            app.send_json(
                Method::POST,
                "/v1/evaluations",
                &json!({"name": "mine", "target_id": agent, "test_cases": case}),
            )
            .await,
        )
        .await;
        let id = evaluation["id"].as_str().expect("id");
        let other = app.key_for("other-org", "eve", Role::Admin, None).await;
        for (method, path) in [
            (Method::GET, format!("/v1/evaluations/{id}")),
            (Method::POST, format!("/v1/evaluations/{id}/run")),
            (Method::GET, format!("/v1/evaluations/{id}/runs")),
            (Method::GET, format!("/v1/evaluations/{id}/results")),
            (Method::DELETE, format!("/v1/evaluations/{id}")),
        ] {
            let resp = app
                .as_key(&other, method.clone(), &path)
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), 404, "{method} {path}");
        }
        // Another organization's agent is unknown here.
        let resp = app
            .as_key(&other, Method::POST, "/v1/evaluations")
            .json(&json!({"name": "x", "target_id": agent, "test_cases": case}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 422);
        let (_, theirs) = json(
            app.as_key(&other, Method::GET, "/v1/evaluations")
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert_eq!(theirs["pagination"]["total"], 0);

        let viewer = app.key_for("default", "vera", Role::Viewer, None).await;
        let resp = app
            .as_key(&viewer, Method::GET, &format!("/v1/evaluations/{id}"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        let resp = app
            .as_key(&viewer, Method::POST, &format!("/v1/evaluations/{id}/run"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 403);
        let reader = app
            .key_for(
                "default",
                "rita",
                Role::Member,
                Some(&[Scope::WriteEvaluations]),
            )
            .await;
        let resp = app
            .as_key(&reader, Method::POST, &format!("/v1/evaluations/{id}/run"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 403, "running also needs execute:agents");
    }
);

backend_test!(
    a_replica_starting_leaves_a_running_evaluation_alone,
    |app| {
        // The model takes 1.5 s per answer: the run is still going when the replica starts.
        let agent = crate::executions::remote_agent(&app, "sleep-1500").await;
        let (status, evaluation) = json(
            app.send_json(
                Method::POST,
                "/v1/evaluations",
                &json!({"name": "slow", "target_id": agent, "test_cases": [
                    {"input": "one", "expected_output": "Echo"},
                    {"input": "two", "expected_output": "Echo"}
                ]}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 201, "{evaluation}");
        let id = evaluation["id"].as_str().expect("id");
        let (status, queued) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/evaluations/{id}/run"),
                &json!({}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 202, "{queued}");
        let location = format!(
            "/v1/evaluations/{id}/runs/{}",
            queued["id"].as_str().expect("id")
        );
        let mut running = false;
        for _ in 0..40 {
            let (_, run) = json(app.get(&location).await).await;
            if run["status"] == "running" {
                running = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(running, "the run started");
        let _replica = app.replica().await;
        let (_, run) = json(app.get(&location).await).await;
        assert_eq!(
            run["status"], "running",
            "not the new replica's to fail: {run}"
        );
        let done = finished_run(&app, &location).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["summary"]["cases"], 2, "{done}");
    }
);
