//! Authentication, scopes, roles, organizations and API keys.

use agentplane_api::models::{Role, Scope};
use reqwest::Method;
use serde_json::json;

use crate::backend_test;
use crate::support::json;

backend_test!(
    keys_authenticate_by_bearer_or_header_and_unknown_ones_do_not,
    |app| {
        let (status, me) = json(app.get("/v1/users/me").await).await;
        assert_eq!(status, 200);
        assert_eq!(
            (me["username"].clone(), me["role"].clone()),
            (json!("admin"), json!("admin"))
        );
        assert_eq!(me["organization"]["name"], "default");

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
    let viewer = app.key_for("default", "vera", Role::Viewer, None).await;
    let (status, _) = json(
        app.as_key(&viewer, Method::GET, "/v1/agents")
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 200);
    let resp = app
        .as_key(&viewer, Method::POST, "/v1/agents")
        .json(&json!({"name": "no"}))
        .send()
        .await
        .expect("post");
    let (status, body) = json(resp).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("INSUFFICIENT_PERMISSIONS"))
    );

    // A key's own scopes narrow further; and a role narrows a key that claims more.
    let reader = app
        .key_for("default", "rita", Role::Member, Some(&[Scope::ReadAgents]))
        .await;
    let resp = app
        .as_key(&reader, Method::DELETE, "/v1/agents/agent_x")
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 403);
    let resp = app
        .as_key(&reader, Method::GET, "/v1/auth/keys")
        .send()
        .await
        .expect("keys");
    assert_eq!(resp.status(), 403);
    let overclaiming = app
        .key_for(
            "default",
            "otto",
            Role::Viewer,
            Some(&[Scope::WriteAgents, Scope::ReadAgents]),
        )
        .await;
    let resp = app
        .as_key(&overclaiming, Method::POST, "/v1/agents")
        .json(&json!({"name": "no"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 403);
    let (_, me) = json(
        app.as_key(&overclaiming, Method::GET, "/v1/users/me")
            .send()
            .await
            .expect("me"),
    )
    .await;
    assert_eq!(me["scopes"], json!(["read:agents"]));
    assert_eq!(
        json(app.get("/v1/agents").await).await.1["pagination"]["total"],
        0,
        "nothing was written"
    );
});

backend_test!(organizations_never_see_each_other, |app| {
    let mine = app.create_agent(json!({"name": "org A's agent"})).await;
    let path = format!("/v1/agents/{}", mine["id"].as_str().expect("id"));
    let other = app.key_for("other-org", "eve", Role::Admin, None).await;
    let as_other = |m: Method| app.as_key(&other, m, &path);
    for req in [
        as_other(Method::GET),
        as_other(Method::PATCH).json(&json!({"name": "mine now"})),
        as_other(Method::PUT).json(&json!({"name": "mine now"})),
        as_other(Method::DELETE),
    ] {
        let (status, body) = json(req.send().await.expect("request")).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (404, json!("AGENT_NOT_FOUND"))
        );
    }
    let (_, list) = json(
        app.as_key(&other, Method::GET, "/v1/agents")
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(list["pagination"]["total"], 0);
    let (_, keys) = json(
        app.as_key(&other, Method::GET, "/v1/auth/keys")
            .send()
            .await
            .expect("keys"),
    )
    .await;
    assert_eq!(keys["pagination"]["total"], 1, "only its own key");
    let (_, still) = json(app.get(&path).await).await;
    assert_eq!(still["name"], "org A's agent");
});

backend_test!(api_keys_are_shown_once_stored_hashed_and_revocable, |app| {
    let resp = app
        .send_json(
            Method::POST,
            "/v1/auth/keys",
            &json!({"name": "ci", "scopes": ["read:agents"]}),
        )
        .await;
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let (status, created) = json(resp).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["key"].as_str().expect("secret").to_string();
    assert!(secret.starts_with(created["prefix"].as_str().expect("prefix")));
    assert_eq!(
        location,
        format!("/v1/auth/keys/{}", created["id"].as_str().expect("id"))
    );

    let resp = app
        .as_key(&secret, Method::GET, "/v1/agents")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200, "the new key works");
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

    let (status, fetched) = json(app.get(&location).await).await;
    assert_eq!((status, &fetched["id"]), (200, &created["id"]));
    assert!(
        fetched.get("key").is_none(),
        "the secret is shown once: {fetched}"
    );
    let resp = app
        .req(Method::DELETE, &location)
        .send()
        .await
        .expect("revoke");
    assert_eq!(resp.status(), 204);
    assert_eq!(
        app.get(&location).await.status(),
        404,
        "revoked keys are gone"
    );
    let (status, body) = json(
        app.as_key(&secret, Method::GET, "/v1/agents")
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let resp = app
        .req(Method::DELETE, &location)
        .send()
        .await
        .expect("revoke again");
    assert_eq!(resp.status(), 404);
});

backend_test!(key_creation_cannot_escalate, |app| {
    let (status, created) = json(
        app.send_json(Method::POST, "/v1/auth/keys", &json!({"name": "bob", "user": {"username": "bob", "email": "bob@example.com", "role": "viewer"}})).await,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["scopes"],
        json!([
            "read:agents",
            "read:keys",
            "read:templates",
            "read:models",
            "read:executions",
            "read:conversations"
        ]),
        "a viewer's default scopes"
    );
    let bob = created["key"].as_str().expect("key").to_string();
    let (_, me) = json(
        app.as_key(&bob, Method::GET, "/v1/users/me")
            .send()
            .await
            .expect("me"),
    )
    .await;
    assert_eq!(
        (me["username"].clone(), me["role"].clone()),
        (json!("bob"), json!("viewer"))
    );

    let (status, _) = json(
        app.send_json(
            Method::POST,
            "/v1/auth/keys",
            &json!({"name": "dup", "user": {"username": "bob", "email": "b@example.com"}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = json(
        app.send_json(Method::POST, "/v1/auth/keys", &json!({"name": "x", "user": {"username": "v", "email": "v@example.com", "role": "viewer"}, "scopes": ["write:agents"]})).await,
    )
    .await;
    assert_eq!(status, 403, "a viewer cannot get write scopes");

    let member = app.key_for("default", "mia", Role::Member, None).await;
    let resp = app
        .as_key(&member, Method::POST, "/v1/auth/keys")
        .json(&json!({"name": "x", "user": {"username": "z", "email": "z@example.com"}}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 403, "only admins create users");
    let limited = app
        .key_for("default", "lia", Role::Member, Some(&[Scope::WriteKeys]))
        .await;
    let resp = app
        .as_key(&limited, Method::POST, "/v1/auth/keys")
        .json(&json!({"name": "x", "scopes": ["write:agents"]}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 403, "a key cannot mint scopes it lacks");

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
    let (status, expiring) = json(
        app.send_json(
            Method::POST,
            "/v1/auth/keys",
            &json!({"name": "soon", "expires_in_days": 30}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201);
    assert!(
        expiring["expires_at"].as_str().is_some_and(|t| t > "2026"),
        "{expiring}"
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
    let (_, keys) = json(
        app.as_key(&member, Method::GET, "/v1/auth/keys")
            .send()
            .await
            .expect("keys"),
    )
    .await;
    assert_eq!(keys["pagination"]["total"], 1);
    let admin_key_id = json(app.get("/v1/auth/keys?per_page=100").await).await.1["data"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["name"] == "bootstrap admin key")
        .map(|k| k["id"].as_str().expect("id").to_string())
        .expect("bootstrap key listed for the admin");
    let resp = app
        .as_key(
            &member,
            Method::DELETE,
            &format!("/v1/auth/keys/{admin_key_id}"),
        )
        .send()
        .await
        .expect("revoke");
    assert_eq!(resp.status(), 404);
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
    let (status, body) = json(
        app.as_key(&secret, Method::GET, "/v1/agents")
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired"))
    );
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
    let (status, me) = json(
        app.as_key(&key, Method::GET, "/v1/users/me")
            .send()
            .await
            .expect("me"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (me["organization"]["name"].clone(), me["scopes"].clone()),
        (json!("cli-org"), json!(["read:agents"]))
    );
});
