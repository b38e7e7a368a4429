//! The vault, end to end: credentials sealed at rest, decrypted only with a vault token of
//! the organization, tokens revoked and expired, isolation, scopes and bad input; and master
//! key rotation over every sealed column (library and CLI).

use agentplane::crypto::Crypto;
use agentplane::db::sealed::{self, SEALED_COLUMNS};
use agentplane_api::models::{Role, Scope};
use diesel::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, fields, json};

/// The key `TestApp` configures (base64 of 32 zero bytes).
const TEST_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

async fn create_credential(app: &TestApp, body: Value) -> Value {
    let (status, c) = json(
        app.send_json(Method::POST, "/v1/vault/credentials", &body)
            .await,
    )
    .await;
    assert_eq!(status, 201, "{c}");
    c
}

async fn issue_token(app: &TestApp, key: &str, body: Value) -> Value {
    let (status, t) = json(
        app.as_key(key, Method::POST, "/v1/vault/tokens")
            .json(&body)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 201, "{t}");
    t
}

async fn read(app: &TestApp, key: &str, id: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = app.as_key(key, Method::GET, &format!("/v1/vault/credentials/{id}"));
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    json(req.send().await.expect("request")).await
}

async fn sealed_column(app: &TestApp, table: &str) -> Vec<sealed::SealedValue> {
    let column = *SEALED_COLUMNS
        .iter()
        .find(|c| c.table == table)
        .expect("registered");
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| sealed::sealed_values(conn, column))
    })
    .await
    .expect("join")
    .expect("values")
}

backend_test!(credentials_open_only_with_a_vault_token, |app| {
    let secret = "sk-live-0123456789abcdef";
    let c = create_credential(
        &app,
        json!({"name": "OpenAI API Key", "type": "api_key", "value": secret,
               "tags": ["openai", "production"], "environment": "production",
               "metadata": {"owner": "ml-team", "rotates": true}}),
    )
    .await;
    let id = c["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("cred_"));
    assert!(c.get("value").is_none(), "never echoed: {c}");
    assert_eq!(c["tags"], json!(["openai", "production"]));
    assert_eq!(c["metadata"]["owner"], "ml-team");
    // Sealed at rest.
    let stored = sealed_column(&app, "vault_credentials").await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].value.starts_with("v1:") && !stored[0].value.contains(secret));

    // Lists and plain reads carry no value.
    let (status, list) = json(
        app.get("/v1/vault/credentials?tag=openai&type=api_key")
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["pagination"]["total"], 1);
    assert!(list["data"][0].get("value").is_none());
    let (_, none) = json(app.get("/v1/vault/credentials?tag=other").await).await;
    assert_eq!(none["pagination"]["total"], 0);
    let (status, plain) = read(&app, &app.admin_key, &id, None).await;
    assert_eq!(status, 200);
    assert!(plain.get("value").is_none() && plain["last_accessed_at"].is_null());

    // A token opens it, once shown, stored hashed.
    let t = issue_token(
        &app,
        &app.admin_key,
        json!({"name": "deploy", "ttl_seconds": 3600}),
    )
    .await;
    let token = t["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("vt_") && t["expires_at"].is_string());
    let (status, open) = read(&app, &app.admin_key, &id, Some(&token)).await;
    assert_eq!(status, 200, "{open}");
    assert_eq!(open["value"], secret);
    assert!(open["last_accessed_at"].is_string());
    let (_, tokens) = json(app.get("/v1/vault/tokens").await).await;
    assert_eq!(tokens["pagination"]["total"], 1);
    assert!(tokens["data"][0].get("token").is_none());
    assert!(tokens["data"][0]["last_used_at"].is_string());
    let token_id = t["id"].as_str().expect("id");
    let (status, got) = json(app.get(&format!("/v1/vault/tokens/{token_id}")).await).await;
    assert_eq!((status, got["revoked_at"].is_null()), (200, true));
    // The decrypted read is a security event naming the credential and token, never the value.
    let (status, events) = json(app.get("/v1/security/events?type=vault_secret_read").await).await;
    assert_eq!(status, 200, "{events}");
    let reads = events["data"].as_array().expect("events");
    assert_eq!(reads.len(), 1, "{events}");
    assert_eq!(reads[0]["resource_id"], id.as_str(), "{events}");
    assert_eq!(reads[0]["details"]["token_id"], token_id, "{events}");
    // It names who read it and in which request.
    for field in ["key_id", "user_id", "request_id"] {
        assert!(reads[0][field].is_string(), "{field}: {events}");
    }
    assert!(
        !events.to_string().contains(secret),
        "the value never leaks: {events}"
    );

    // Replace without a value keeps it; with one, changes it; a stale If-Match is 412.
    let etag = {
        let resp = app.get(&format!("/v1/vault/credentials/{id}")).await;
        resp.headers()["etag"].to_str().expect("etag").to_string()
    };
    let (status, replaced) = json(
        app.send_json(
            Method::PUT,
            &format!("/v1/vault/credentials/{id}"),
            &json!({"name": "OpenAI key", "type": "api_key"}),
        )
        .await,
    )
    .await;
    assert_eq!((status, replaced["version"].as_i64()), (200, Some(2)));
    assert_eq!(
        read(&app, &app.admin_key, &id, Some(&token)).await.1["value"],
        secret
    );
    let (status, _) = json(
        app.req(Method::PUT, &format!("/v1/vault/credentials/{id}"))
            .header("If-Match", etag)
            .json(&json!({"name": "x", "type": "api_key", "value": "new"}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 412);
    app.send_json(
        Method::PUT,
        &format!("/v1/vault/credentials/{id}"),
        &json!({"name": "OpenAI key", "type": "api_key", "value": "sk-rotated"}),
    )
    .await;
    assert_eq!(
        read(&app, &app.admin_key, &id, Some(&token)).await.1["value"],
        "sk-rotated"
    );

    // Revoked, unknown and expired tokens are 401 with the envelope.
    let (status, revoked) = json(
        app.req(Method::POST, &format!("/v1/vault/tokens/{token_id}/revoke"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(revoked["revoked_at"].is_string());
    let (status, body) = read(&app, &app.admin_key, &id, Some(&token)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("VAULT_TOKEN_INVALID"))
    );
    assert!(body.to_string().find("sk-rotated").is_none());
    let (status, _) = read(&app, &app.admin_key, &id, Some("vt_not-a-token")).await;
    assert_eq!(status, 401);
    let expiring = issue_token(
        &app,
        &app.admin_key,
        json!({"name": "short", "ttl_seconds": 60}),
    )
    .await;
    let expiring_id = expiring["id"].as_str().expect("id").to_string();
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            use agentplane::db::schema::vault_tokens as vt;
            diesel::update(vt::table.filter(vt::id.eq(expiring_id)))
                .set(vt::expires_at.eq("2020-01-01T00:00:00.000000Z"))
                .execute(conn)
                .map_err(agentplane::db::StoreError::from)
        })
    })
    .await
    .expect("join")
    .expect("expire");
    let (status, body) = read(&app, &app.admin_key, &id, expiring["token"].as_str()).await;
    assert_eq!(status, 401, "{body}");

    // Delete: then 404.
    let resp = app
        .req(Method::DELETE, &format!("/v1/vault/credentials/{id}"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 204);
    assert_eq!(read(&app, &app.admin_key, &id, None).await.0, 404);
});

backend_test!(vault_is_isolated_scoped_and_validated, |app| {
    let c = create_credential(
        &app,
        json!({"name": "db", "type": "password", "value": "hunter2"}),
    )
    .await;
    let id = c["id"].as_str().expect("id").to_string();
    let mine = issue_token(&app, &app.admin_key, json!({"name": "mine"})).await;
    assert!(mine["expires_at"].is_null());
    let other = app.key_for("globex", "gina", Role::Admin, None).await;
    let theirs = issue_token(&app, &other, json!({"name": "theirs"})).await;

    // Another organization sees nothing, with or without tokens.
    assert_eq!(read(&app, &other, &id, None).await.0, 404);
    assert_eq!(
        read(&app, &other, &id, theirs["token"].as_str()).await.0,
        404
    );
    let (_, list) = json(
        app.as_key(&other, Method::GET, "/v1/vault/credentials")
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(list["pagination"]["total"], 0);
    let (_, tokens) = json(
        app.as_key(&other, Method::GET, "/v1/vault/tokens")
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(tokens["pagination"]["total"], 1);
    let mine_id = mine["id"].as_str().expect("id");
    let (status, _) = json(
        app.as_key(&other, Method::GET, &format!("/v1/vault/tokens/{mine_id}"))
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = json(
        app.as_key(
            &other,
            Method::POST,
            &format!("/v1/vault/tokens/{mine_id}/revoke"),
        )
        .send()
        .await
        .expect("r"),
    )
    .await;
    assert_eq!(status, 404);
    // Their token on our credential: 403, and no value.
    let (status, body) = read(&app, &app.admin_key, &id, theirs["token"].as_str()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("VAULT_TOKEN_FORBIDDEN"))
    );
    assert_eq!(
        read(&app, &app.admin_key, &id, mine["token"].as_str())
            .await
            .1["value"],
        "hunter2"
    );

    // Scopes: a viewer reads metadata but cannot store or issue; no read:vault, no list.
    let viewer = app.key_for("default", "vic", Role::Viewer, None).await;
    assert_eq!(read(&app, &viewer, &id, None).await.0, 200);
    let (status, _) = json(
        app.as_key(&viewer, Method::POST, "/v1/vault/credentials")
            .json(&json!({"name": "x", "type": "other", "value": "y"}))
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = json(
        app.as_key(&viewer, Method::POST, "/v1/vault/tokens")
            .json(&json!({"name": "x"}))
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 403);
    // A member stores credentials but neither mints vault tokens nor reads values: 403
    // naming the field.
    let member = app.key_for("default", "mo", Role::Member, None).await;
    let (status, err) = json(
        app.as_key(&member, Method::POST, "/v1/vault/tokens")
            .json(&json!({"name": "x"}))
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 403, "{err}");
    assert_eq!(crate::support::fields(&err), ["token"], "{err}");
    let (_, t) = json(
        app.send_json(
            Method::POST,
            "/v1/vault/tokens",
            &json!({"name": "admin's"}),
        )
        .await,
    )
    .await;
    let token = t["token"].as_str().expect("token").to_string();
    let (status, err) = read(&app, &member, &id, Some(&token)).await;
    assert_eq!(status, 403, "{err}");
    assert_eq!(crate::support::fields(&err), ["x-vault-token"], "{err}");
    assert!(err.get("value").is_none(), "{err}");
    let agents_only = app
        .key_for("default", "ann", Role::Member, Some(&[Scope::ReadAgents]))
        .await;
    let (status, _) = json(
        app.as_key(&agents_only, Method::GET, "/v1/vault/credentials")
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 403);

    // Bad input names the field and writes nothing.
    for (body, field) in [
        (json!({"name": "x", "type": "api_key"}), "value"),
        (json!({"name": "x", "type": "secret", "value": "y"}), "type"),
        (
            json!({"name": "x", "type": "api_key", "value": "y", "tags": ["a b"]}),
            "tags",
        ),
        (
            json!({"name": "x", "type": "api_key", "value": "y", "extra": 1}),
            "extra",
        ),
    ] {
        let (status, err) = json(
            app.send_json(Method::POST, "/v1/vault/credentials", &body)
                .await,
        )
        .await;
        assert!(status == 400 || status == 422, "{status} {err}");
        assert!(
            fields(&err).iter().any(|f| f.starts_with(field)),
            "{field}: {err}"
        );
    }
    let (status, err) = json(
        app.send_json(
            Method::POST,
            "/v1/vault/tokens",
            &json!({"name": "x", "ttl_seconds": 5}),
        )
        .await,
    )
    .await;
    assert!(status == 400 || status == 422, "{err}");
    assert!(fields(&err).iter().any(|f| f == "ttl_seconds"), "{err}");
    let (_, list) = json(app.get("/v1/vault/credentials").await).await;
    assert_eq!(list["pagination"]["total"], 1);
    // Idempotent create.
    let body = json!({"name": "k", "type": "token", "value": "t"});
    let first = app
        .req(Method::POST, "/v1/vault/credentials")
        .header("Idempotency-Key", "k-1")
        .json(&body)
        .send()
        .await
        .expect("r");
    let (_, first) = json(first).await;
    let again = app
        .req(Method::POST, "/v1/vault/credentials")
        .header("Idempotency-Key", "k-1")
        .json(&body)
        .send()
        .await
        .expect("r");
    let (status, again) = json(again).await;
    assert_eq!((status, &again["id"]), (201, &first["id"]));
});

/// Creates one value in every sealed column through the API.
async fn seal_everything(app: &TestApp) {
    let (s, m) = json(app.send_json(Method::POST, "/v1/models", &json!({"name": "m", "provider": "openai-compatible", "model_id": "gpt", "api_key": "sk-model"})).await).await;
    assert_eq!(s, 201, "{m}");
    let (s, t) = json(app.send_json(Method::POST, "/v1/tools", &json!({"type": "api", "name": "t", "url": "http://127.0.0.1:9/x", "secret_headers": {"Authorization": "Bearer tool-secret"}})).await).await;
    assert_eq!(s, 201, "{t}");
    create_credential(
        app,
        json!({"name": "c", "type": "api_key", "value": "vault-secret"}),
    )
    .await;
    let (s, tw) = json(app.send_json(Method::POST, "/v1/twins", &json!({"name": "tw", "type": "logistics", "data_sources": [{"type": "database", "connection_string": "postgresql://u:twin-secret@h/db"}]})).await).await;
    assert_eq!(s, 201, "{tw}");
    // A background simulation's job and then its one-off notification target hold its
    // signing secret, sealed.
    let simulate = format!("/v1/twins/{}/simulate", tw["id"].as_str().expect("id"));
    let (s, sim) = json(app.send_json(Method::POST, &simulate, &json!({"scenario": "demand_spike", "model": "capacity_planning", "parameters": {"increase_percentage": 30}, "options": {"seed": 7, "runs": 10, "run_async": true, "notification_webhook": "http://127.0.0.1:9/notify", "notification_secret": "notification-secret"}})).await).await;
    assert_eq!(s, 202, "{sim}");
    let poll = format!(
        "/v1/twins/{}/simulations/{}",
        tw["id"].as_str().expect("id"),
        sim["id"].as_str().expect("id")
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, now) = json(app.get(&poll).await).await;
        if now["status"] == "completed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {now}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (s, wh) = json(
        app.send_json(
            Method::POST,
            "/v1/webhooks",
            &json!({"url": "http://127.0.0.1:9/hook", "events": ["agent.created"]}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{wh}");
}

async fn snapshot(app: &TestApp) -> Vec<Vec<sealed::SealedValue>> {
    let mut out = Vec::new();
    for c in SEALED_COLUMNS {
        out.push(sealed_column(app, c.table).await);
    }
    out
}

backend_test!(
    rotating_the_master_key_reseals_every_column_or_nothing,
    |app| {
        seal_everything(&app).await;
        let old = Crypto::from_base64(TEST_KEY).expect("key");
        let new = Crypto::new(&[9u8; 32]);
        let before = snapshot(&app).await;
        let plain: Vec<Vec<Vec<u8>>> = before
            .iter()
            .map(|col| {
                col.iter()
                    .map(|v| old.decrypt(&v.value).expect("opens"))
                    .collect()
            })
            .collect();
        assert!(
            before.iter().all(|col| col.len() == 1),
            "one value per column"
        );

        let (o, n) = (old.clone(), new.clone());
        let store = app.store.clone();
        let rotation = tokio::task::spawn_blocking(move || {
            store.run_blocking(|conn| sealed::rotate_master_key(conn, &o, &n))
        })
        .await
        .expect("join")
        .expect("rotates");
        assert_eq!(rotation.total(), SEALED_COLUMNS.len());
        let after = snapshot(&app).await;
        for (i, col) in after.iter().enumerate() {
            for (j, v) in col.iter().enumerate() {
                assert_eq!(
                    new.decrypt(&v.value).expect("the new key opens it"),
                    plain[i][j]
                );
                assert!(
                    old.decrypt(&v.value).is_err(),
                    "the old key no longer opens it"
                );
            }
        }

        // The one-off target keeps its url beside the resealed secret.
        let store = app.store.clone();
        let targets = tokio::task::spawn_blocking(move || {
            store.run_blocking(|conn| {
                diesel::sql_query(
                    "SELECT id, target AS value FROM webhook_deliveries WHERE target IS NOT NULL",
                )
                .load::<sealed::SealedValue>(conn)
                .map_err(agentplane::db::StoreError::from)
            })
        })
        .await
        .expect("join")
        .expect("targets");
        assert_eq!(targets.len(), 1);
        let target: Value = serde_json::from_str(&targets[0].value).expect("JSON");
        assert_eq!(target["url"], "http://127.0.0.1:9/notify", "{target}");
        assert_eq!(
            new.decrypt(target["secret_encrypted"].as_str().expect("sealed"))
                .expect("opens"),
            b"notification-secret"
        );

        // A value the current key cannot open, in the last column: the rotation changes nothing.
        let stranger = Crypto::new(&[3u8; 32]);
        let last = SEALED_COLUMNS[SEALED_COLUMNS.len() - 1];
        let id = after[after.len() - 1][0].id.clone();
        let mut bad = stranger.encrypt(b"[\"x\"]");
        if let Some(field) = last.field {
            bad = json!({"url": "http://127.0.0.1:9/notify", field: bad}).to_string();
        }
        let store = app.store.clone();
        let sql = format!(
            "UPDATE {} SET {} = '{bad}' WHERE id = '{id}'",
            last.table, last.column
        );
        tokio::task::spawn_blocking(move || {
            store.run_blocking(|conn| {
                diesel::sql_query(sql)
                    .execute(conn)
                    .map_err(agentplane::db::StoreError::from)
            })
        })
        .await
        .expect("join")
        .expect("corrupt");
        let broken = snapshot(&app).await;
        let (n, n2) = (new.clone(), Crypto::new(&[4u8; 32]));
        let store = app.store.clone();
        let failed = tokio::task::spawn_blocking(move || {
            store.run_blocking(|conn| sealed::rotate_master_key(conn, &n, &n2))
        })
        .await
        .expect("join");
        assert!(
            failed.is_err(),
            "a value the key cannot open aborts the rotation"
        );
        assert_eq!(snapshot(&app).await, broken, "nothing changed");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotate_master_key_command_installs_the_new_key() {
    let dir = std::env::temp_dir().join(agentplane::ids::new_id("rotate_cli"));
    std::fs::create_dir_all(&dir).expect("dir");
    let key_file = dir.join("master.key");
    let old_text = Crypto::new_key_base64();
    Crypto::write_key_file(&key_file, &old_text).expect("key file");
    let kf = key_file.clone();
    let app = TestApp::start_with(crate::support::Backend::Sqlite, move |c| {
        c.master_key = None;
        c.master_key_file = Some(kf);
    })
    .await
    .expect("sqlite");
    seal_everything(&app).await;
    let before = snapshot(&app).await;
    let database = app.database_url.clone();
    drop(app);

    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_agentplane"))
            .args(args)
            .env_remove("AGENTPLANE_MASTER_KEY")
            .env_remove("DATABASE_URL")
            .output()
            .expect("runs")
    };
    let out = run(&[
        "rotate-master-key",
        "--database",
        &database,
        "--master-key-file",
        key_file.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rotated 7 sealed value(s)"));
    let new_text = std::fs::read_to_string(&key_file).expect("key");
    assert_ne!(new_text.trim(), old_text);
    let (old, new) = (
        Crypto::from_base64(&old_text).expect("old"),
        Crypto::from_base64(&new_text).expect("new"),
    );
    let store = agentplane::db::Store::open(&database, 1).expect("store");
    for (i, c) in SEALED_COLUMNS.iter().enumerate() {
        let values = store
            .run_blocking(|conn| sealed::sealed_values(conn, *c))
            .expect("values");
        for (j, v) in values.iter().enumerate() {
            assert_eq!(
                new.decrypt(&v.value).expect("new key"),
                old.decrypt(&before[i][j].value).expect("old key")
            );
            assert!(old.decrypt(&v.value).is_err());
        }
    }
    // With the old key the command refuses and changes nothing.
    let stale = dir.join("stale.key");
    Crypto::write_key_file(&stale, &old_text).expect("stale");
    let out = run(&[
        "rotate-master-key",
        "--database",
        &database,
        "--master-key-file",
        stale.to_str().expect("path"),
    ]);
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(&stale).expect("kept").trim(),
        old_text
    );
    let _ = std::fs::remove_dir_all(&dir);
}
