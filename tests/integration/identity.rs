//! Authentication, scopes, roles, organizations and API keys. Happy paths and documented
//! refusals go through the typed client (`app.api()`, clients/rust); raw reqwest remains for
//! what the client cannot or must not send (missing or foreign auth schemes, invalid input,
//! raw bodies inspected for leaks).

use agentplane_api::models::{Role, Scope};
use agentplane_client::types::{AgentInput, ApiKeyInput};
use reqwest::Method;
use serde_json::json;

use crate::backend_test;
use crate::support::{api_error, json, typed};

fn not_found() -> (u16, String) {
    (404, "AGENT_NOT_FOUND".to_string())
}

backend_test!(
    keys_authenticate_by_bearer_or_header_and_unknown_ones_do_not,
    |app| {
        let me = app.api().get_current_user().send().await.expect("me");
        assert_eq!(me.status(), 200);
        assert_eq!(
            (me.username.as_str(), me.role),
            ("admin", agentplane_client::types::Role::Admin)
        );
        assert_eq!(me.organization.name, "default");

        let resp = app
            .client
            .get(app.url("/v1/users/me"))
            .header("X-API-Key", &app.admin_key)
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 200, "X-API-Key works too");

        for (header, value) in [
            (None, ""),
            (Some("authorization"), "Bearer ap_not_a_real_key"),
            (Some("authorization"), "Basic YWRtaW46YWRtaW4="),
            (Some("x-api-key"), "ap_not_a_real_key"),
        ] {
            let mut req = app.client.get(app.url("/v1/agents"));
            if let Some(h) = header {
                req = req.header(h, value);
            }
            let (status, body) = json(req.send().await.expect("get")).await;
            assert_eq!(
                (status, body["error"]["code"].clone()),
                (401, json!("INVALID_API_KEY")),
                "{header:?} {value}"
            );
        }
    }
);

backend_test!(scopes_and_roles_limit_what_a_key_does, |app| {
    let create = |api: agentplane_client::Client| async move {
        api.create_agent()
            .body(typed::<AgentInput>(json!({"name": "no"})))
            .send()
            .await
    };
    let forbidden = (403, "INSUFFICIENT_PERMISSIONS".to_string());
    let viewer = app.api_as(&app.key_for("default", "vera", Role::Viewer, None).await);
    let listed = viewer.list_agents().send().await.expect("list");
    assert_eq!(listed.status(), 200);
    assert_eq!(api_error(create(viewer).await), forbidden);

    // A key's own scopes narrow further; and a role narrows a key that claims more.
    let reader = app.api_as(
        &app.key_for("default", "rita", Role::Member, Some(&[Scope::ReadAgents]))
            .await,
    );
    assert_eq!(
        api_error(reader.delete_agent().agent_id("agent_x").send().await),
        forbidden
    );
    assert_eq!(api_error(reader.list_api_keys().send().await), forbidden);
    let overclaiming = app.api_as(
        &app.key_for(
            "default",
            "otto",
            Role::Viewer,
            Some(&[Scope::WriteAgents, Scope::ReadAgents]),
        )
        .await,
    );
    assert_eq!(api_error(create(overclaiming.clone()).await), forbidden);
    let me = overclaiming.get_current_user().send().await.expect("me");
    assert_eq!(me.scopes, vec![agentplane_client::types::Scope::ReadAgents]);
    let list = app.api().list_agents().send().await.expect("list");
    assert_eq!(list.pagination.total, 0, "nothing was written");
});

backend_test!(organizations_never_see_each_other, |app| {
    let api = app.api();
    let mine = api
        .create_agent()
        .body(typed::<AgentInput>(json!({"name": "org A's agent"})))
        .send()
        .await
        .expect("create");
    let id = mine.id.as_str();
    let other = app.api_as(&app.key_for("other-org", "eve", Role::Admin, None).await);
    let name = || json!({"name": "mine now"});
    assert_eq!(
        api_error(other.get_agent().agent_id(id).send().await),
        not_found()
    );
    assert_eq!(
        api_error(
            other
                .update_agent()
                .agent_id(id)
                .body(typed::<agentplane_client::types::AgentPatch>(name()))
                .send()
                .await
        ),
        not_found()
    );
    assert_eq!(
        api_error(
            other
                .replace_agent()
                .agent_id(id)
                .body(typed::<AgentInput>(name()))
                .send()
                .await
        ),
        not_found()
    );
    assert_eq!(
        api_error(other.delete_agent().agent_id(id).send().await),
        not_found()
    );
    let list = other.list_agents().send().await.expect("list");
    assert_eq!(list.pagination.total, 0);
    let keys = other.list_api_keys().send().await.expect("keys");
    assert_eq!(keys.pagination.total, 1, "only its own key");
    let still = api.get_agent().agent_id(id).send().await.expect("get");
    assert_eq!(still.name, "org A's agent");
});

backend_test!(api_keys_are_shown_once_stored_hashed_and_revocable, |app| {
    let api = app.api();
    let resp = api
        .create_api_key()
        .body(typed::<ApiKeyInput>(
            json!({"name": "ci", "scopes": ["read:agents"]}),
        ))
        .send()
        .await
        .expect("create key");
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let created = resp.into_inner();
    let secret = created.key.clone();
    assert!(secret.starts_with(&created.prefix));
    assert_eq!(location, format!("/v1/auth/keys/{}", created.id));

    let works = app.api_as(&secret).list_agents().send().await;
    assert_eq!(works.expect("the new key works").status(), 200);
    // Raw: the listing's bytes must not contain the secret.
    let listing = app.get("/v1/auth/keys").await.text().await.expect("list");
    assert!(
        !listing.contains(&secret) && !listing.contains("\"key\""),
        "secrets are never listed"
    );

    let store = app.store.clone();
    let hashes: Vec<String> = tokio::task::spawn_blocking(move || {
        use agentplane::db::schema::api_keys;
        use diesel::prelude::*;
        store.run_blocking(|c| {
            Ok(api_keys::table
                .select(api_keys::key_hash)
                .load::<String>(c)?)
        })
    })
    .await
    .expect("join")
    .expect("hashes");
    assert!(hashes.contains(&agentplane::auth::hash_key(&secret)));
    assert!(
        !hashes.iter().any(|h| h.contains(&secret)),
        "only the hash is stored"
    );

    let raw = app.get(&location).await.text().await.expect("get");
    assert!(!raw.contains(&secret), "the secret is shown once: {raw}");
    let fetched = api
        .get_api_key()
        .key_id(created.id.as_str())
        .send()
        .await
        .expect("the secret is shown once");
    assert_eq!(fetched.id, created.id);
    let resp = api
        .revoke_api_key()
        .key_id(created.id.as_str())
        .send()
        .await
        .expect("revoke");
    assert_eq!(resp.status(), 204);
    let gone = api.get_api_key().key_id(created.id.as_str()).send().await;
    assert_eq!(api_error(gone).0, 404, "revoked keys are gone");
    assert_eq!(
        api_error(app.api_as(&secret).list_agents().send().await),
        (401, "INVALID_API_KEY".to_string())
    );
    let again = api
        .revoke_api_key()
        .key_id(created.id.as_str())
        .send()
        .await;
    assert_eq!(api_error(again).0, 404);
});

backend_test!(key_creation_cannot_escalate, |app| {
    use agentplane_client::types::Scope as ApiScope;
    let api = app.api();
    let create_key = |api: agentplane_client::Client, body: serde_json::Value| async move {
        api.create_api_key()
            .body(typed::<ApiKeyInput>(body))
            .send()
            .await
    };
    let created = create_key(
        api.clone(),
        json!({"name": "bob", "user": {"username": "bob", "email": "bob@example.com", "role": "viewer"}}),
    )
    .await
    .expect("create");
    assert_eq!(created.status(), 201);
    assert!(
        created.scopes.contains(&ApiScope::ReadAgents)
            && created.scopes.contains(&ApiScope::ReadKeys)
            && created
                .scopes
                .iter()
                .all(|s| s.to_string().starts_with("read:")),
        "a viewer's default scopes are the read scopes: {:?}",
        created.scopes
    );
    let me = app
        .api_as(&created.key)
        .get_current_user()
        .send()
        .await
        .expect("me");
    assert_eq!(
        (me.username.as_str(), me.role),
        ("bob", agentplane_client::types::Role::Viewer)
    );

    let dup = create_key(
        api.clone(),
        json!({"name": "dup", "user": {"username": "bob", "email": "b@example.com"}}),
    )
    .await;
    assert_eq!(api_error(dup).0, 409);
    let escalating = create_key(
        api.clone(),
        json!({"name": "x", "user": {"username": "v", "email": "v@example.com", "role": "viewer"}, "scopes": ["write:agents"]}),
    )
    .await;
    assert_eq!(
        api_error(escalating).0,
        403,
        "a viewer cannot get write scopes"
    );

    let member = app.key_for("default", "mia", Role::Member, None).await;
    let by_member = create_key(
        app.api_as(&member),
        json!({"name": "x", "user": {"username": "z", "email": "z@example.com"}}),
    )
    .await;
    assert_eq!(api_error(by_member).0, 403, "only admins create users");
    let limited = app
        .key_for("default", "lia", Role::Member, Some(&[Scope::WriteKeys]))
        .await;
    let minting = create_key(
        app.api_as(&limited),
        json!({"name": "x", "scopes": ["write:agents"]}),
    )
    .await;
    assert_eq!(
        api_error(minting).0,
        403,
        "a key cannot mint scopes it lacks"
    );

    let (status, err) = json(
        app.send_json(
            Method::POST,
            "/v1/auth/keys",
            &json!({"name": "old", "expires_in_days": 0}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, crate::support::fields(&err)),
        (422, vec!["expires_in_days".to_string()])
    );
    let expiring = create_key(api.clone(), json!({"name": "soon", "expires_in_days": 30}))
        .await
        .expect("create");
    assert!(
        expiring.expires_at.is_some_and(|t| t > chrono::Utc::now()),
        "{expiring:?}"
    );
    let (status, err) = json(
        app.send_json(
            Method::POST,
            "/v1/auth/keys",
            &json!({"name": "x", "user": {"username": "bad name", "email": "nope"}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        crate::support::fields(&err),
        vec!["user.username".to_string(), "user.email".to_string()]
    );

    // Members see and revoke only their own keys.
    let member = app.api_as(&member);
    let keys = member.list_api_keys().send().await.expect("keys");
    assert_eq!(keys.pagination.total, 1);
    let all = api
        .list_api_keys()
        .per_page(std::num::NonZeroU64::new(100).expect("100"))
        .send()
        .await
        .expect("keys")
        .into_inner();
    let admin_key_id = all
        .data
        .into_iter()
        .find(|k| k.name == "bootstrap admin key")
        .map(|k| k.id)
        .expect("bootstrap key listed for the admin");
    let revoke = member
        .revoke_api_key()
        .key_id(admin_key_id.as_str())
        .send()
        .await;
    assert_eq!(api_error(revoke).0, 404);
});

backend_test!(expired_keys_stop_working, |app| {
    let store = app.store.clone();
    let secret = tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            let user = agentplane::auth::ensure_user(
                conn,
                "default",
                "admin",
                "admin@localhost",
                Role::Admin,
            )?;
            let scopes = agentplane::auth::role_scopes(Role::Admin);
            agentplane::auth::insert_key(
                conn,
                &user,
                "expired",
                &scopes,
                Some("2001-01-01T00:00:00.000000Z".into()),
            )
        })
    })
    .await
    .expect("join")
    .expect("key")
    .1;
    match app.api_as(&secret).list_agents().send().await {
        Err(agentplane_client::Error::ErrorResponse(resp)) => {
            assert_eq!(resp.status(), 401);
            assert!(resp.into_inner().error.message.contains("expired"));
        }
        other => panic!("expected 401, got {other:?}"),
    }
});

backend_test!(the_cli_creates_working_keys, |app| {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentplane"))
        .args([
            "keys",
            "create",
            "--database",
            &app.database_url,
            "--org",
            "cli-org",
            "--user",
            "carl",
            "--role",
            "member",
            "--scopes",
            "read:agents",
        ])
        .output()
        .expect("run agentplane keys create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    let me = app
        .api_as(&key)
        .get_current_user()
        .send()
        .await
        .expect("me");
    assert_eq!(me.organization.name, "cli-org");
    assert_eq!(me.scopes, vec![agentplane_client::types::Scope::ReadAgents]);
});

backend_test!(the_cli_creates_keys_while_the_server_writes, |app| {
    // A CLI transaction that read, then wrote, failed at once ("database is locked") when the
    // server wrote to the SQLite file in between; it now takes the write lock up front.
    let done = std::sync::atomic::AtomicBool::new(false);
    let writer = |w: usize| {
        let done = &done;
        let app = &app;
        async move {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("busy {w}.{n}");
                app.create_agent(json!({"name": name, "type": "assistant"}))
                    .await;
                n += 1;
            }
        }
    };
    let writes = futures_util::future::join_all((0..8).map(writer));
    let keys = async {
        for i in 0..20 {
            let url = app.database_url.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_agentplane"))
                    .args(["keys", "create", "--database", &url])
                    .args(["--org", &format!("busy-org-{i}"), "--user", "dana"])
                    .output()
            })
            .await
            .expect("join")
            .expect("run agentplane keys create");
            assert!(
                out.status.success(),
                "key {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    tokio::join!(writes, keys);
});
