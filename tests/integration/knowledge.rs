//! Knowledge bases, end to end: CRUD, ingest, query and search with scores, sources and their
//! syncs against local HTTP servers, cascading deletes, isolation and bad input.

use std::time::Duration;

use agentplane_api::models::Role;
use base64::Engine;
use poem::{Route, get, handler, web::Path};
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{Backend, TestApp, fields, json};

/// Serves `route` on 127.0.0.1:0 and returns its base URL.
async fn serve(route: Route) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let server = poem::Server::new(poem::listener::TcpListener::bind(addr.to_string()));
    tokio::spawn(server.run(route));
    // The listener binds inside `run`; wait until it answers.
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    format!("http://{addr}")
}

async fn create_kb(app: &TestApp, body: Value) -> Value {
    let (status, kb) = json(app.send_json(Method::POST, "/v1/knowledge", &body).await).await;
    assert_eq!(status, 201, "{kb}");
    kb
}

async fn ingest(app: &TestApp, kb: &str, body: Value) -> Value {
    let (status, out) = json(
        app.send_json(Method::POST, &format!("/v1/knowledge/{kb}/ingest"), &body)
            .await,
    )
    .await;
    assert_eq!(status, 200, "{out}");
    out
}

async fn query(app: &TestApp, kb: &str, body: Value) -> Value {
    let (status, out) = json(
        app.send_json(Method::POST, &format!("/v1/knowledge/{kb}/query"), &body)
            .await,
    )
    .await;
    assert_eq!(status, 200, "{out}");
    out
}

/// Polls a sync until it ends.
async fn finished_sync(app: &TestApp, location: &str) -> Value {
    for _ in 0..200 {
        let (status, sync) = json(app.get(location).await).await;
        assert_eq!(status, 200, "{sync}");
        if sync["status"] == "succeeded" || sync["status"] == "failed" {
            return sync;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the sync at {location} never finished");
}

backend_test!(knowledge_base_crud_with_etags, |app| {
    let kb = create_kb(
        &app,
        json!({"name": "Product Documentation", "type": "documentation",
               "description": "docs", "processing_options": {"chunk_size": 500, "overlap": 900}}),
    )
    .await;
    let id = kb["id"].as_str().expect("id");
    assert!(id.starts_with("kb_"));
    assert_eq!(kb["processing_options"]["chunk_size"], 500);
    assert_eq!(
        kb["processing_options"]["overlap"], 499,
        "overlap is capped below the chunk size"
    );
    assert_eq!(
        (kb["document_count"].as_i64(), kb["version"].as_i64()),
        (Some(0), Some(1))
    );

    let path = format!("/v1/knowledge/{id}");
    let resp = app.get(&path).await;
    let tag = resp.headers()["etag"].to_str().expect("etag").to_string();
    assert_eq!(tag, "\"1\"");
    let resp = app
        .req(Method::GET, &path)
        .header("if-none-match", &tag)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 304);

    let (status, patched) = json(
        app.send_json(
            Method::PATCH,
            &path,
            &json!({"description": null, "processing_options": {"overlap": 10}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert!(patched.get("description").is_none());
    assert_eq!(
        patched["processing_options"]["chunk_size"], 500,
        "PATCH merges options"
    );
    assert_eq!(patched["processing_options"]["overlap"], 10);
    assert_eq!(patched["version"], 2);

    let resp = app
        .req(Method::PUT, &path)
        .header("if-match", "\"1\"")
        .json(&json!({"name": "Stale"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 412);
    let (status, replaced) = json(
        app.req(Method::PUT, &path)
            .header("if-match", "\"2\"")
            .json(&json!({"name": "Docs"}))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(
        (replaced["name"].as_str(), replaced["type"].as_str()),
        (Some("Docs"), Some("general"))
    );

    create_kb(&app, json!({"name": "FAQ", "type": "faq"})).await;
    let (_, list) = json(app.get("/v1/knowledge?type=faq").await).await;
    assert_eq!(list["pagination"]["total"], 1);
    assert_eq!(list["data"][0]["name"], "FAQ");
    let (_, page) = json(app.get("/v1/knowledge?per_page=1").await).await;
    assert_eq!(page["data"][0]["name"], "FAQ", "newest first");
    let cursor = page["pagination"]["next_cursor"].as_str().expect("cursor");
    let (_, next) = json(
        app.get(&format!("/v1/knowledge?cursor={cursor}&limit=1"))
            .await,
    )
    .await;
    assert_eq!(next["data"][0]["name"], "Docs");
    assert!(next["pagination"]["next_cursor"].is_null());

    let resp = app.req(Method::DELETE, &path).send().await.expect("send");
    assert_eq!(resp.status(), 204);
    assert_eq!(app.get(&path).await.status(), 404);
});

backend_test!(ingest_then_query_ranks_with_scores_and_filters, |app| {
    let kb = create_kb(&app, json!({"name": "Docs", "type": "documentation"})).await;
    let kb_id = kb["id"].as_str().expect("id").to_string();
    let out = ingest(
        &app,
        &kb_id,
        json!({
            "chunk_size": 200, "overlap": 20,
            "documents": [
                {"text": "# Installing the SDK\nInstall the SDK with pip install example-sdk. The SDK installation needs Python.",
                 "content_type": "text/markdown", "source": "install.md", "metadata": {"team": "sdk"}},
                {"title": "Passwords", "text": "To reset your password open Settings and choose Reset password.",
                 "metadata": {"team": "accounts"}},
                {"text": "<html><head><title>Billing</title></head><body><p>Invoices are sent monthly.</p><script>install()</script></body></html>",
                 "content_type": "text/html"},
                {"text": "{\"title\": \"Limits\", \"rate\": 100}", "content_type": "application/json"}
            ]
        }),
    )
    .await;
    assert_eq!(out["documents"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        out["documents"][0]["title"], "Installing the SDK",
        "Markdown heading"
    );
    assert_eq!(out["documents"][2]["title"], "Billing", "HTML <title>");
    assert_eq!(out["documents"][3]["title"], "Limits", "JSON title");
    assert!(out["chunks_created"].as_i64().unwrap_or(0) >= 4);

    let results = query(&app, &kb_id, json!({"query": "How do I install the SDK?"})).await;
    let hits = results["results"].as_array().expect("results");
    assert!(!hits.is_empty(), "{results}");
    assert_eq!(hits[0]["metadata"]["title"], "Installing the SDK");
    assert_eq!(hits[0]["metadata"]["source"], "install.md");
    assert_eq!(hits[0]["metadata"]["position"], 0);
    assert!(
        !hits
            .iter()
            .any(|h| h["content"].as_str().unwrap_or("").contains("install()")),
        "scripts are not indexed"
    );
    let scores: Vec<f64> = hits
        .iter()
        .map(|h| h["score"].as_f64().expect("score"))
        .collect();
    assert!(scores.iter().all(|s| (0.0..1.0).contains(s)), "{scores:?}");
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );

    // Stemming: "passwords" finds "password"; filters match metadata exactly.
    let r = query(
        &app,
        &kb_id,
        json!({"query": "passwords", "filters": {"team": "accounts"}}),
    )
    .await;
    assert_eq!(r["total"], 1, "{r}");
    assert_eq!(r["results"][0]["metadata"]["title"], "Passwords");
    let r = query(
        &app,
        &kb_id,
        json!({"query": "passwords", "filters": {"team": "sdk"}}),
    )
    .await;
    assert_eq!(r["total"], 0, "{r}");
    // Metadata may hold NUL (JSON can), which PostgreSQL's jsonb refuses: filters still compare.
    ingest(
        &app,
        &kb_id,
        json!({"documents": [{"title": "Refunds", "text": "Refund passwords are never sent.",
                              "metadata": {"team": "ops\u{0}"}}]}),
    )
    .await;
    for (team, title) in [("ops\u{0}", "Refunds"), ("accounts", "Passwords")] {
        let r = query(
            &app,
            &kb_id,
            json!({"query": "passwords", "filters": {"team": team}}),
        )
        .await;
        assert_eq!(r["total"], 1, "{team:?}: {r}");
        assert_eq!(r["results"][0]["metadata"]["title"], title);
    }
    // AIMatrix options: max_results, min_score, include_metadata.
    let r = query(&app, &kb_id, json!({"query": "sdk password invoices", "options": {"max_results": 1, "include_metadata": false}})).await;
    assert_eq!(r["total"], 1);
    assert!(r["results"][0].get("metadata").is_none());
    let r = query(&app, &kb_id, json!({"query": "sdk", "min_score": 0.999})).await;
    assert_eq!(r["total"], 0, "{r}");
    let r = query(&app, &kb_id, json!({"query": "?!"})).await;
    assert_eq!(r["total"], 0, "a query without words finds nothing");

    // Org-wide search (the literal `/search` wins over `/{kb_id}`), filtered by type.
    let other = create_kb(&app, json!({"name": "Other", "type": "faq"})).await;
    ingest(
        &app,
        other["id"].as_str().expect("id"),
        json!({"documents": [{"text": "Install guide for the desktop app."}]}),
    )
    .await;
    let (status, all) = json(app.get("/v1/knowledge/search?q=install").await).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["total"], 2, "{all}");
    let (_, docs_only) = json(
        app.get("/v1/knowledge/search?q=install&type=documentation&max_results=5")
            .await,
    )
    .await;
    assert_eq!(docs_only["total"], 1, "{docs_only}");
    assert_eq!(docs_only["results"][0]["knowledge_base_id"], kb_id.as_str());

    // Documents and chunks.
    let (_, docs) = json(app.get(&format!("/v1/knowledge/{kb_id}/documents")).await).await;
    assert_eq!(docs["pagination"]["total"], 5, "four, and the refunds one");
    let doc_id = out["documents"][0]["id"].as_str().expect("doc");
    let (status, doc) = json(
        app.get(&format!("/v1/knowledge/{kb_id}/documents/{doc_id}"))
            .await,
    )
    .await;
    assert_eq!(
        (status, doc["title"].as_str()),
        (200, Some("Installing the SDK"))
    );
    let (_, chunks) = json(
        app.get(&format!("/v1/knowledge/{kb_id}/documents/{doc_id}/chunks"))
            .await,
    )
    .await;
    assert_eq!(chunks["data"][0]["position"], 0);
    assert_eq!(chunks["data"][0]["metadata"]["team"], "sdk");
    let resp = app
        .req(
            Method::DELETE,
            &format!("/v1/knowledge/{kb_id}/documents/{doc_id}"),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 204);
    let r = query(&app, &kb_id, json!({"query": "sdk"})).await;
    assert_eq!(r["total"], 0, "a deleted document's chunks are gone: {r}");

    // Deleting the knowledge base deletes its chunks.
    let resp = app
        .req(Method::DELETE, &format!("/v1/knowledge/{kb_id}"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 204);
    let kb_for_count = kb_id.clone();
    let left: i64 = app
        .store
        .run(move |conn| {
            use agentplane::db::schema::knowledge_chunks;
            use diesel::prelude::*;
            knowledge_chunks::table
                .filter(knowledge_chunks::kb_id.eq(kb_for_count))
                .count()
                .get_result(conn)
                .map_err(agentplane::db::StoreError::from)
        })
        .await
        .expect("count");
    assert_eq!(left, 0);
});

backend_test!(
    the_search_seam_is_scoped_to_the_given_knowledge_bases,
    |app| {
        let a = create_kb(&app, json!({"name": "A"})).await;
        let b = create_kb(&app, json!({"name": "B"})).await;
        let (a, b) = (
            a["id"].as_str().expect("a").to_string(),
            b["id"].as_str().expect("b").to_string(),
        );
        ingest(
            &app,
            &a,
            json!({"documents": [{"text": "Rust borrow checker explained."}]}),
        )
        .await;
        ingest(
            &app,
            &b,
            json!({"documents": [{"text": "The borrow checker, again."}]}),
        )
        .await;
        let org = {
            let (_, me) = json(app.get("/v1/users/me").await).await;
            me["organization"]["id"].as_str().expect("org").to_string()
        };
        let (a2, org2) = (a.clone(), org.clone());
        let hits = app
            .store
            .run(move |conn| {
                let options = agentplane::knowledge::SearchOptions {
                    top_k: 10,
                    min_score: None,
                    filters: serde_json::Map::new(),
                };
                let only_a = agentplane::knowledge::search(
                    conn,
                    &org2,
                    std::slice::from_ref(&a2),
                    "borrow",
                    &options,
                )?;
                let none = agentplane::knowledge::search(conn, &org2, &[], "borrow", &options)?;
                let other_org = agentplane::knowledge::search(
                    conn,
                    "org_other",
                    std::slice::from_ref(&a2),
                    "borrow",
                    &options,
                )?;
                Ok((only_a, none, other_org))
            })
            .await
            .expect("search");
        assert_eq!(hits.0.len(), 1);
        assert_eq!(hits.0[0].knowledge_base_id, a);
        assert!(hits.0[0].score > 0.0);
        assert!(hits.1.is_empty(), "no knowledge bases, no hits");
        assert!(hits.2.is_empty(), "another organization sees nothing");
    }
);

#[handler]
fn page_html() -> poem::Response {
    poem::Response::builder()
        .content_type("text/html; charset=utf-8")
        .body("<html><head><title>Deploy guide</title></head><body><h1>Deploying</h1><p>Deploy with the kubectl apply command.</p></body></html>")
}

#[handler]
fn gh_contents(Path(path): Path<String>) -> poem::Response {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let body = match path.as_str() {
        "docs" => json!([
            {"type": "file", "name": "guide.md", "path": "docs/guide.md"},
            {"type": "file", "name": "logo.png", "path": "docs/logo.png"},
            {"type": "dir", "name": "api", "path": "docs/api"}
        ]),
        "docs/api" => json!([{"type": "file", "name": "ref.json", "path": "docs/api/ref.json"}]),
        "docs/guide.md" => {
            json!({"type": "file", "encoding": "base64", "content": b64("# Guide\nTelemetry can be disabled in the config file.")})
        }
        "docs/api/ref.json" => {
            json!({"type": "file", "encoding": "base64", "content": b64("{\"title\": \"API reference\", \"endpoint\": \"/v1/widgets\"}")})
        }
        _ => {
            return poem::Response::builder()
                .status(poem::http::StatusCode::NOT_FOUND)
                .body("{}");
        }
    };
    poem::Response::builder()
        .content_type("application/json")
        .body(body.to_string())
}

async fn sync_source(app: &TestApp, kb: &str, source: &str) -> Value {
    let resp = app
        .req(
            Method::POST,
            &format!("/v1/knowledge/{kb}/sources/{source}/sync"),
        )
        .send()
        .await
        .expect("send");
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let (status, job) = json(resp).await;
    assert_eq!(status, 202, "{job}");
    assert!(job["id"].as_str().unwrap_or("").starts_with("sync_"));
    finished_sync(app, &location).await
}

async fn url_and_github_sources_sync_from_local_servers(backend: Backend) {
    let fake = serve(
        Route::new()
            .at("/guide.html", get(page_html))
            .at("/repos/acme/handbook/contents/*path", get(gh_contents)),
    )
    .await;
    let api = fake.clone();
    let Some(app) = TestApp::start_with(backend, move |c| c.github_api_url = api).await else {
        eprintln!("skipped: set AGENTPLANE_TEST_POSTGRES to run on PostgreSQL");
        return;
    };
    let kb = create_kb(&app, json!({"name": "Ops"})).await;
    let kb_id = kb["id"].as_str().expect("id").to_string();

    let (status, src) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/knowledge/{kb_id}/sources"),
            &json!({"type": "url", "url": format!("{fake}/guide.html")}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{src}");
    assert_eq!(src["status"], "pending");
    let src_id = src["id"].as_str().expect("id").to_string();
    let sync = sync_source(&app, &kb_id, &src_id).await;
    assert_eq!(sync["status"], "succeeded", "{sync}");
    assert_eq!(sync["documents"], 1);
    let r = query(
        &app,
        &kb_id,
        json!({"query": "kubectl deploy", "filters": {"source_type": "url"}}),
    )
    .await;
    assert_eq!(r["results"][0]["metadata"]["title"], "Deploy guide", "{r}");
    let (_, src) = json(
        app.get(&format!("/v1/knowledge/{kb_id}/sources/{src_id}"))
            .await,
    )
    .await;
    assert_eq!(src["status"], "active");
    assert!(src["last_sync_at"].is_string());
    // A second sync replaces the documents instead of duplicating them.
    sync_source(&app, &kb_id, &src_id).await;
    let (_, docs) = json(
        app.get(&format!(
            "/v1/knowledge/{kb_id}/documents?source_id={src_id}"
        ))
        .await,
    )
    .await;
    assert_eq!(docs["pagination"]["total"], 1);

    // A failing fetch is recorded, never left running.
    let (_, broken) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/knowledge/{kb_id}/sources"),
            &json!({"type": "url", "url": format!("{fake}/missing")}),
        )
        .await,
    )
    .await;
    let sync = sync_source(&app, &kb_id, broken["id"].as_str().expect("id")).await;
    assert_eq!(sync["status"], "failed");
    assert!(
        sync["error"].as_str().unwrap_or("").contains("404"),
        "{sync}"
    );

    // GitHub, through the contents API of the local fake, via a CodexOS-style ingest.
    let out = ingest(&app, &kb_id, json!({"sources": [{"type": "github", "repository": "https://github.com/acme/handbook", "paths": ["docs/"]}]})).await;
    let sync_id = out["syncs"][0]["id"].as_str().expect("sync queued");
    let sync = finished_sync(&app, &format!("/v1/knowledge/{kb_id}/syncs/{sync_id}")).await;
    assert_eq!(sync["status"], "succeeded", "{sync}");
    assert_eq!(
        sync["documents"], 2,
        "the .png is skipped, the subdirectory walked"
    );
    let r = query(&app, &kb_id, json!({"query": "telemetry disabled"})).await;
    assert_eq!(
        r["results"][0]["metadata"]["source"], "github:acme/handbook/docs/guide.md",
        "{r}"
    );
    assert_eq!(r["results"][0]["metadata"]["path"], "docs/guide.md");

    // Deleting a source deletes its chunks.
    let resp = app
        .req(
            Method::DELETE,
            &format!("/v1/knowledge/{kb_id}/sources/{src_id}"),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 204);
    let r = query(&app, &kb_id, json!({"query": "kubectl"})).await;
    assert_eq!(r["total"], 0, "{r}");

    // A sync left running by a dead process is failed when a server starts on the database.
    let (kb2, src2) = (
        kb_id.clone(),
        broken["id"].as_str().expect("id").to_string(),
    );
    let org = kb_org(&app, &kb_id).await;
    app.store
        .run(move |conn| {
            <agentplane::db::knowledge::SyncRow as agentplane::db::crud::Child>::insert(
                conn,
                &agentplane::db::knowledge::SyncRow {
                    id: "sync_interrupted".into(),
                    org_id: org,
                    kb_id: kb2,
                    source_id: src2,
                    status: agentplane::db::knowledge::SyncStatus::Running,
                    error: None,
                    documents: 0,
                    chunks: 0,
                    created_at: agentplane::ids::now(),
                    started_at: Some(agentplane::ids::now()),
                    finished_at: None,
                },
            )
        })
        .await
        .expect("insert");
    let config = agentplane::server::Config {
        listen: "127.0.0.1:0".into(),
        database_url: app.database_url.clone(),
        pool_size: 2,
        master_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
        ..agentplane::server::Config::default()
    };
    let (bound, _) = agentplane::server::bind(&config).await.expect("binds");
    drop(bound);
    let (_, sync) = json(
        app.get(&format!("/v1/knowledge/{kb_id}/syncs/sync_interrupted"))
            .await,
    )
    .await;
    assert_eq!(sync["status"], "failed");
    assert_eq!(sync["error"], "interrupted by a server restart");
}

async fn kb_org(app: &TestApp, kb_id: &str) -> String {
    let _ = kb_id;
    let (_, me) = json(app.get("/v1/users/me").await).await;
    me["organization"]["id"].as_str().expect("org").to_string()
}

mod sources_sync {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::url_and_github_sources_sync_from_local_servers(super::Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::url_and_github_sources_sync_from_local_servers(super::Backend::Postgres).await;
    }
}

backend_test!(inline_text_sources_and_idempotent_creates, |app| {
    let body = json!({"name": "FAQ", "sources": [{"type": "text", "title": "Passwords", "text": "Reset your password in Settings."},
                                                 {"type": "url", "url": "http://127.0.0.1:9/never"}]});
    let first = app
        .req(Method::POST, "/v1/knowledge")
        .header("idempotency-key", "kb-1")
        .json(&body)
        .send()
        .await
        .expect("send");
    let (status, kb) = json(first).await;
    assert_eq!(status, 201, "{kb}");
    assert_eq!(
        (kb["source_count"].as_i64(), kb["document_count"].as_i64()),
        (Some(2), Some(1))
    );
    let again = app
        .req(Method::POST, "/v1/knowledge")
        .header("idempotency-key", "kb-1")
        .json(&body)
        .send()
        .await
        .expect("send");
    let (status, replay) = json(again).await;
    assert_eq!(
        (status, &replay["id"]),
        (201, &kb["id"]),
        "a retry returns the first knowledge base"
    );
    let other = app
        .req(Method::POST, "/v1/knowledge")
        .header("idempotency-key", "kb-1")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(other.status(), 409);

    let kb_id = kb["id"].as_str().expect("id");
    let (_, sources) = json(app.get(&format!("/v1/knowledge/{kb_id}/sources")).await).await;
    let statuses: Vec<&str> = sources["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|s| s["status"].as_str())
        .collect();
    assert!(
        statuses.contains(&"active") && statuses.contains(&"pending"),
        "{sources}"
    );
    let r = query(&app, kb_id, json!({"query": "reset password"})).await;
    assert_eq!(r["results"][0]["metadata"]["source_type"], "text", "{r}");
    // Re-syncing an inline text source re-ingests what was stored.
    let text_source = sources["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|s| s["type"] == "text")
        .expect("text source");
    let sync = sync_source(&app, kb_id, text_source["id"].as_str().expect("id")).await;
    assert_eq!(
        (sync["status"].as_str(), sync["documents"].as_i64()),
        (Some("succeeded"), Some(1)),
        "{sync}"
    );
});

backend_test!(bad_input_names_the_field_and_other_orgs_get_404, |app| {
    let kb = create_kb(&app, json!({"name": "Mine"})).await;
    let kb_id = kb["id"].as_str().expect("id");

    let (status, body) = json(
        app.send_json(Method::POST, "/v1/knowledge", &json!({"name": ""}))
            .await,
    )
    .await;
    assert_eq!(status, 422);
    assert!(fields(&body).contains(&"name".to_string()), "{body}");
    let (status, body) = json(
        app.send_json(
            Method::POST,
            "/v1/knowledge",
            &json!({"name": "x", "processing_options": {"chunk_size": 5}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        fields(&body).iter().any(|f| f.contains("chunk_size")),
        "{body}"
    );
    let (status, body) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/knowledge/{kb_id}/query"),
            &json!({"query": "x", "top_k": 0}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422);
    assert!(fields(&body).contains(&"top_k".to_string()), "{body}");
    let (status, body) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/knowledge/{kb_id}/query"),
            &json!({"query": "x", "filters": {"bad key": 1}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/knowledge/{kb_id}/sources"),
            &json!({"type": "ftp", "url": "ftp://x"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/knowledge/{kb_id}/sources"),
            &json!({"type": "url", "url": "javascript:alert(1)"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = json(app.get("/v1/knowledge/search").await).await;
    assert_eq!(status, 400);
    assert!(fields(&body).contains(&"q".to_string()), "{body}");

    let stranger = app.key_for("other-org", "eve", Role::Admin, None).await;
    for (method, path, body) in [
        (Method::GET, format!("/v1/knowledge/{kb_id}"), None),
        (
            Method::PATCH,
            format!("/v1/knowledge/{kb_id}"),
            Some(json!({"name": "stolen"})),
        ),
        (Method::DELETE, format!("/v1/knowledge/{kb_id}"), None),
        (
            Method::POST,
            format!("/v1/knowledge/{kb_id}/query"),
            Some(json!({"query": "x"})),
        ),
        (
            Method::POST,
            format!("/v1/knowledge/{kb_id}/ingest"),
            Some(json!({"documents": [{"text": "x"}]})),
        ),
        (Method::GET, format!("/v1/knowledge/{kb_id}/sources"), None),
        (
            Method::GET,
            format!("/v1/knowledge/{kb_id}/documents"),
            None,
        ),
    ] {
        let mut req = app.as_key(&stranger, method.clone(), &path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, err) = json(req.send().await.expect("send")).await;
        assert_eq!(status, 404, "{method} {path}: {err}");
    }
    let (_, theirs) = json(
        app.as_key(&stranger, Method::GET, "/v1/knowledge")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(theirs["pagination"]["total"], 0);

    let viewer = app.key_for("default", "val", Role::Viewer, None).await;
    let resp = app
        .as_key(&viewer, Method::GET, "/v1/knowledge")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200, "viewers read knowledge");
    let resp = app
        .as_key(&viewer, Method::POST, "/v1/knowledge")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 403, "viewers do not write it");
});

/// One part of a form: name, file name, content type, content.
type FormPart = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static [u8],
);

/// A `multipart/form-data` body.
fn multipart(parts: &[FormPart]) -> (String, Vec<u8>) {
    let boundary = "agentplane-test-boundary";
    let mut body = Vec::new();
    for (name, file_name, content_type, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{name}\"");
        if let Some(f) = file_name {
            disposition.push_str(&format!("; filename=\"{f}\""));
        }
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        if let Some(c) = content_type {
            body.extend_from_slice(format!("Content-Type: {c}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

backend_test!(files_upload_as_multipart_sources, |app| {
    let kb = create_kb(&app, json!({"name": "Files"})).await;
    let kb_id = kb["id"].as_str().expect("id").to_string();
    let upload = |parts: Vec<FormPart>, key: Option<String>| {
        let (content_type, body) = multipart(&parts);
        let req = match key {
            Some(k) => app.as_key(&k, Method::POST, &format!("/v1/knowledge/{kb_id}/files")),
            None => app.req(Method::POST, &format!("/v1/knowledge/{kb_id}/files")),
        };
        req.header("content-type", content_type).body(body).send()
    };
    let resp = upload(
        vec![
            (
                "file",
                Some("guide.md"),
                Some("text/markdown"),
                b"# Rotating keys\nRotate the signing keys every ninety days.",
            ),
            ("name", None, None, b"Security guide"),
        ],
        None,
    )
    .await
    .expect("send");
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let (status, source) = json(resp).await;
    assert_eq!(status, 201, "{source}");
    assert_eq!(
        (source["type"].as_str(), source["status"].as_str()),
        (Some("file"), Some("active"))
    );
    assert_eq!(
        (source["file_name"].as_str(), source["name"].as_str()),
        (Some("guide.md"), Some("Security guide"))
    );
    assert_eq!(
        location,
        format!(
            "/v1/knowledge/{kb_id}/sources/{}",
            source["id"].as_str().expect("id")
        )
    );
    let r = query(
        &app,
        &kb_id,
        json!({"query": "rotate signing keys", "filters": {"source_type": "file"}}),
    )
    .await;
    assert_eq!(r["results"][0]["metadata"]["title"], "Rotating keys", "{r}");
    assert_eq!(r["results"][0]["metadata"]["source"], "guide.md");
    let sync = sync_source(&app, &kb_id, source["id"].as_str().expect("id")).await;
    assert_eq!(
        (sync["status"].as_str(), sync["documents"].as_i64()),
        (Some("succeeded"), Some(1)),
        "{sync}"
    );

    let (status, body) = json(
        upload(
            vec![(
                "file",
                Some("scan.pdf"),
                Some("application/pdf"),
                b"%PDF-1.7 \xff\xfe",
            )],
            None,
        )
        .await
        .expect("send"),
    )
    .await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(fields(&body), vec!["file".to_string()]);
    let (status, body) = json(
        upload(vec![("title", None, None, b"no file")], None)
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(fields(&body).contains(&"file".to_string()), "{body}");
    let (status, body) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/knowledge/{kb_id}/files"),
            &json!({"file": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(fields(&body), vec!["Content-Type".to_string()]);
    let (status, body) = json(
        app.req(Method::POST, &format!("/v1/knowledge/{kb_id}/files"))
            .header("content-type", "multipart/form-data; boundary=zzz")
            .body("garbage")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let stranger = app.key_for("other-org", "eve", Role::Admin, None).await;
    let (status, body) = json(
        upload(
            vec![("file", Some("a.txt"), None, b"hello")],
            Some(stranger),
        )
        .await
        .expect("send"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
});

/// The texts of a query's results.
async fn found(app: &TestApp, kb: &str, words: &str) -> Vec<String> {
    let r = query(app, kb, json!({"query": words})).await;
    strings_at(&r, "results", "content")
}

/// The `field` of each item of the array `list` of `value`.
fn strings_at(value: &Value, list: &str, field: &str) -> Vec<String> {
    value[list]
        .as_array()
        .expect(list)
        .iter()
        .filter_map(|item| item[field].as_str().map(str::to_string))
        .collect()
}

backend_test!(sources_are_replaced_in_place, |app| {
    let page = serve(Route::new().at("/guide.html", get(page_html))).await;
    let kb = create_kb(&app, json!({"name": "Help"})).await;
    let kb_id = kb["id"].as_str().expect("id");
    let sources = format!("/v1/knowledge/{kb_id}/sources");
    let (status, src) = json(
        app.send_json(
            Method::POST,
            &sources,
            &json!({"type": "text", "name": "FAQ", "text": "Reset your password in Settings."}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{src}");
    let path = format!("{sources}/{}", src["id"].as_str().expect("id"));
    assert_eq!(found(&app, kb_id, "password").await.len(), 1);

    // New text: the old documents go, the new ones are searchable at once.
    let put = |body: Value| {
        let path = path.clone();
        let app = &app;
        async move { json(app.send_json(Method::PUT, &path, &body).await).await }
    };
    let (status, text) =
        put(json!({"type": "text", "name": "Billing", "text": "Invoices are sent monthly."})).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        (
            &text["id"],
            &text["created_at"],
            &text["name"],
            &text["status"]
        ),
        (
            &src["id"],
            &src["created_at"],
            &json!("Billing"),
            &json!("active")
        )
    );
    assert!(found(&app, kb_id, "password").await.is_empty());
    assert_eq!(found(&app, kb_id, "invoices").await.len(), 1);

    // A page instead: nothing until it is synced.
    let url = format!("{page}/guide.html");
    let (status, web) = put(json!({"type": "url", "url": url})).await;
    assert_eq!(status, 200, "{web}");
    assert_eq!(
        (&web["type"], &web["status"], &web["last_sync_at"]),
        (&json!("url"), &json!("pending"), &Value::Null)
    );
    assert!(found(&app, kb_id, "invoices").await.is_empty());
    let sync = sync_source(&app, kb_id, src["id"].as_str().expect("id")).await;
    assert_eq!(sync["status"], "succeeded", "{sync}");
    assert_eq!(found(&app, kb_id, "kubectl").await.len(), 1);

    // The same page under a new name keeps what was fetched.
    let (status, renamed) = put(json!({"type": "url", "url": url, "name": "Deploy guide"})).await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(
        (&renamed["name"], &renamed["status"]),
        (&json!("Deploy guide"), &json!("active"))
    );
    assert!(renamed["last_sync_at"].is_string(), "{renamed}");
    assert_eq!(found(&app, kb_id, "kubectl").await.len(), 1);
    let (_, got) = json(app.get(&path).await).await;
    assert_eq!(got, renamed);

    // Bad input changes nothing; another organization, or a source being synced, neither.
    let (status, bad) = put(json!({"type": "ftp", "url": url})).await;
    assert!(status == 422 || status == 400, "{status} {bad}");
    let other = crate::support::other_admin(&app).await;
    let resp = crate::support::send_as(
        &app,
        &other,
        Method::PUT,
        &path,
        Some(&json!({"type": "text", "text": "mine now"})),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let (status, _) = json(
        app.send_json(
            Method::PUT,
            &format!("{sources}/src_missing"),
            &json!({"type": "text", "text": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    let (store, id) = (
        app.store.clone(),
        src["id"].as_str().expect("id").to_string(),
    );
    tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            use agentplane::db::knowledge::{SourceStatus, set_source_status};
            set_source_status(conn, &id, SourceStatus::Syncing, None)
        })
    })
    .await
    .expect("join")
    .expect("syncing");
    let (status, busy) = put(json!({"type": "text", "text": "later"})).await;
    assert_eq!(
        (status, busy["error"]["code"].as_str()),
        (409, Some("SOURCE_SYNCING")),
        "{busy}"
    );
    assert_eq!(found(&app, kb_id, "kubectl").await.len(), 1);
});

#[handler]
async fn slow_page() -> poem::Response {
    tokio::time::sleep(Duration::from_secs(2)).await;
    poem::Response::builder()
        .content_type("text/html; charset=utf-8")
        .body("<html><body><p>Slow pages still arrive.</p></body></html>")
}

backend_test!(a_replica_starting_leaves_a_running_sync_alone, |app| {
    let page = serve(Route::new().at("/slow.html", get(slow_page))).await;
    let kb = create_kb(&app, json!({"name": "Slow"})).await;
    let kb_id = kb["id"].as_str().expect("id");
    let (status, src) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/knowledge/{kb_id}/sources"),
            &json!({"type": "url", "url": format!("{page}/slow.html")}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{src}");
    let resp = app
        .req(
            Method::POST,
            &format!(
                "/v1/knowledge/{kb_id}/sources/{}/sync",
                src["id"].as_str().expect("id")
            ),
        )
        .send()
        .await
        .expect("send");
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert_eq!(resp.status(), 202);
    // Another server starts while this one fetches: the sync is not its to fail.
    let mut running = false;
    for _ in 0..40 {
        let (_, sync) = json(app.get(&location).await).await;
        if sync["status"] == "running" {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(running, "the sync started");
    let _replica = app.replica().await;
    let (_, sync) = json(app.get(&location).await).await;
    assert_eq!(sync["status"], "running", "{sync}");
    let done = finished_sync(&app, &location).await;
    assert_eq!(
        (&done["status"], &done["documents"]),
        (&json!("succeeded"), &json!(1)),
        "{done}"
    );
});

backend_test!(concurrent_keyed_creates_make_one_kb, |app| {
    let body = json!({"name": "Racing", "sources": [{"type": "text", "text": "One answer for every retry."}]});
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let req = app
            .req(Method::POST, "/v1/knowledge")
            .header("idempotency-key", "kb-race")
            .json(&body);
        tasks.push(tokio::spawn(async move {
            json(req.send().await.expect("send")).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        let (status, kb) = task.await.expect("join");
        assert_eq!(status, 201, "every retry answers the first create: {kb}");
        ids.insert(kb["id"].as_str().expect("id").to_string());
    }
    assert_eq!(
        ids.len(),
        1,
        "concurrent retries agree on one knowledge base"
    );
    let (status, list) = json(app.get("/v1/knowledge").await).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["pagination"]["total"], 1, "{list}");
});

/// The ids of a list page.
fn ids_of(page: &Value) -> Vec<String> {
    strings_at(page, "data", "id")
}

backend_test!(lists_page_by_cursor_as_by_page_number, |app| {
    let kb = create_kb(&app, json!({"name": "Paged"})).await;
    let kb_id = kb["id"].as_str().expect("id");
    let documents: Vec<Value> = ["Alpha", "Beta", "Gamma"]
        .iter()
        .map(|t| json!({"title": t, "text": format!("{t} text")}))
        .collect();
    ingest(&app, kb_id, json!({"documents": documents})).await;
    for t in ["one", "two", "three"] {
        let path = format!("/v1/knowledge/{kb_id}/sources");
        let body = json!({"type": "text", "name": t, "text": format!("{t} text")});
        assert_eq!(
            app.send_json(Method::POST, &path, &body).await.status(),
            201
        );
    }

    for list in ["documents", "sources"] {
        let base = format!("/v1/knowledge/{kb_id}/{list}");
        let (_, all) = json(app.get(&base).await).await;
        let order = ids_of(&all);
        assert_eq!(
            order.len(),
            if list == "documents" { 6 } else { 3 },
            "{all}"
        );
        // Page numbers and cursors walk the same order, newest first.
        let mut by_cursor = Vec::new();
        let mut next = format!("{base}?per_page=2");
        loop {
            let (status, page) = json(app.get(&next).await).await;
            assert_eq!(status, 200, "{page}");
            by_cursor.extend(ids_of(&page));
            let Some(cursor) = page["pagination"]["next_cursor"].as_str() else {
                break;
            };
            next = format!("{base}?cursor={cursor}&limit=2");
        }
        assert_eq!(by_cursor, order, "{list} by cursor");
        let (_, second) = json(app.get(&format!("{base}?page=2&per_page=2")).await).await;
        assert_eq!(
            ids_of(&second),
            order[2..order.len().min(4)].to_vec(),
            "{list} page 2"
        );
        assert_eq!(second["pagination"]["total"], order.len());
    }

    // A cursor naming a row that is gone pages by its offset.
    let base = format!("/v1/knowledge/{kb_id}/documents");
    let (_, first) = json(app.get(&format!("{base}?per_page=1")).await).await;
    let cursor = first["pagination"]["next_cursor"]
        .as_str()
        .expect("cursor")
        .to_string();
    let gone = &ids_of(&first)[0];
    let resp = app
        .req(Method::DELETE, &format!("{base}/{gone}"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 204);
    let (_, rest) = json(app.get(&base).await).await;
    let (_, after) = json(app.get(&format!("{base}?cursor={cursor}&limit=1")).await).await;
    assert_eq!(ids_of(&after), ids_of(&rest)[1..2].to_vec(), "{after}");

    let (status, bad) = json(app.get(&format!("{base}?cursor=nonsense")).await).await;
    assert_eq!((status, fields(&bad)), (400, vec!["cursor".to_string()]));
});
