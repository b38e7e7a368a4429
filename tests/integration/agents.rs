//! The agents resource, end to end. Happy paths go through the typed client generated from
//! the spec (`app.api()`, clients/rust); raw reqwest remains where a test deliberately sends
//! what the client cannot (malformed input, `null` to clear a field, raw bodies to inspect).

use agentplane_client::types::{Agent, AgentField, AgentInput, AgentPatch, AgentStatus};
use agentplane_client::types::{ListAgentsOrder, ListAgentsSort};
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{api_error, etag, fields, json, typed};

/// The request examples the spec documents for `POST /v1/agents`: one per seed.
fn seed_examples() -> Vec<(String, Value)> {
    let spec: Value = serde_json::from_str(agentplane_api::OPENAPI_JSON).expect("spec");
    spec.pointer("/paths/~1v1~1agents/post/requestBody/content/application~1json/examples")
        .and_then(Value::as_object)
        .expect("examples")
        .iter()
        .map(|(name, ex)| (name.clone(), ex["value"].clone()))
        .collect()
}

fn as_json(agent: &Agent) -> Value {
    serde_json::to_value(agent).expect("agent as JSON")
}

backend_test!(seed_examples_create_read_update_replace_delete, |app| {
    let api = app.api();
    let examples = seed_examples();
    assert_eq!(
        examples.len(),
        5,
        "one example per seed, and a branching CodexOS flow"
    );
    // A saved agent's tools must exist in the organization: the seeds name theirs
    // (`rag_tool_1`), which here become a tool this test creates.
    let tool = crate::agents_references::rag_tool(&app, "rag_tool_1").await;
    for (name, mut body) in examples {
        if let Some(tools) = body.get_mut("tools").and_then(Value::as_array_mut) {
            tools.iter_mut().for_each(|t| *t = json!(tool));
        }
        let input: AgentInput = typed(body.clone());
        let resp = api.create_agent().body(input).send().await.expect("create");
        assert_eq!(resp.status(), 201);
        let location = resp.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        assert_eq!(etag(&resp), "\"1\"");
        let created = resp.into_inner();
        let id = created.id.clone();
        assert!(id.starts_with("agent_"));
        assert_eq!(location, format!("/v1/agents/{id}"));
        assert_eq!(json!(created.name), body["name"]);
        assert_eq!(created.version.get(), 1);

        let fetched = api
            .get_agent()
            .agent_id(id.as_str())
            .send()
            .await
            .expect("get");
        assert_eq!(
            as_json(&fetched),
            as_json(&created),
            "{name}: GET returns what POST returned"
        );

        let patched = api
            .update_agent()
            .agent_id(id.as_str())
            .body(typed::<AgentPatch>(
                json!({"status": "inactive", "tags": ["patched"]}),
            ))
            .send()
            .await
            .expect("patch")
            .into_inner();
        assert_eq!(patched.status, AgentStatus::Inactive);
        assert_eq!(patched.tags, vec!["patched".to_string()]);
        assert_eq!(
            json!(patched.name),
            body["name"],
            "PATCH keeps what it does not name"
        );
        assert_eq!(patched.version.get(), 2);

        let replaced = api
            .replace_agent()
            .agent_id(id.as_str())
            .body(typed::<AgentInput>(json!({"name": "replaced"})))
            .send()
            .await
            .expect("put")
            .into_inner();
        assert_eq!(replaced.name, "replaced");
        assert_eq!(
            replaced.status,
            AgentStatus::Active,
            "PUT resets what it leaves out"
        );
        assert!(replaced.tags.is_empty());
        assert_eq!(replaced.created_at, created.created_at);

        let resp = api
            .delete_agent()
            .agent_id(id.as_str())
            .send()
            .await
            .expect("delete");
        assert_eq!(resp.status(), 204);
        assert_eq!(
            api_error(api.get_agent().agent_id(id.as_str()).send().await),
            (404, "AGENT_NOT_FOUND".to_string())
        );
        assert_eq!(
            api_error(api.delete_agent().agent_id(id.as_str()).send().await),
            (404, "AGENT_NOT_FOUND".to_string())
        );
    }
});

backend_test!(lists_page_filter_sort_and_select_fields, |app| {
    let api = app.api();
    for i in 0..25 {
        let (kind, status) = if i % 5 == 0 {
            ("analyzer", "training")
        } else {
            ("assistant", "active")
        };
        api.create_agent()
            .body(typed::<AgentInput>(json!({
                "name": format!("agent {i:02}"),
                "type": kind,
                "status": status,
                "description": if i == 7 { "Handles REFUNDS 100%" } else { "plain" },
            })))
            .send()
            .await
            .expect("create");
    }
    let page1 = api.list_agents().send().await.expect("list").into_inner();
    assert_eq!(page1.data.len(), 20, "default per_page is 20");
    assert_eq!(page1.pagination.total, 25);
    assert_eq!(page1.pagination.pages, 2);
    assert_eq!(
        page1.data[0].name.as_deref(),
        Some("agent 24"),
        "default sort is -created_at"
    );

    let page2 = api
        .list_agents()
        .page(std::num::NonZeroU64::MIN.saturating_add(1))
        .per_page(std::num::NonZeroU64::new(20).expect("20"))
        .send()
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page2.data.len(), 5);
    assert_eq!(page2.pagination.page.get(), 2);
    assert_eq!(page2.pagination.next_cursor, None);

    // Walking cursors visits every agent once, in order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut req = api
            .list_agents()
            .sort(ListAgentsSort::Name)
            .order(ListAgentsOrder::Asc)
            .limit(std::num::NonZeroU64::new(7).expect("7"));
        if let Some(c) = &cursor {
            req = req.cursor(c.as_str());
        }
        let page = req.send().await.expect("page").into_inner();
        seen.extend(page.data.into_iter().filter_map(|a| a.name));
        match page.pagination.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("agent {i:02}")).collect();
    assert_eq!(seen, expected);

    let per_page = |n: u64| std::num::NonZeroU64::new(n).expect("non-zero");
    let desc = api
        .list_agents()
        .sort(ListAgentsSort::Xname)
        .per_page(per_page(3))
        .send()
        .await
        .expect("list");
    assert_eq!(desc.data[0].name.as_deref(), Some("agent 24"));

    let total = |list: agentplane_client::types::AgentList| list.pagination.total;
    let filtered = api
        .list_agents()
        .type_("analyzer")
        .per_page(per_page(100))
        .send()
        .await
        .expect("list");
    assert_eq!(total(filtered.into_inner()), 5);
    let filtered = api
        .list_agents()
        .filter_status(AgentStatus::Training)
        .send()
        .await
        .expect("list");
    assert_eq!(total(filtered.into_inner()), 5);
    let searched = api
        .list_agents()
        .search("refunds 100%")
        .send()
        .await
        .expect("list");
    assert_eq!(
        total(searched.into_inner()),
        1,
        "search is case-insensitive and % is literal"
    );
    let searched = api
        .list_agents()
        .search("agent 01")
        .send()
        .await
        .expect("list");
    assert_eq!(total(searched.into_inner()), 1);

    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&chrono::Utc)
    };
    let future = api
        .list_agents()
        .filter_created_at_gte(at("2999-01-01T00:00:00Z"))
        .send()
        .await
        .expect("list");
    assert_eq!(total(future.into_inner()), 0);
    let past = api
        .list_agents()
        .filter_created_at_gte(at("2000-01-01T00:00:00+02:00"))
        .filter_created_at_lte(at("2999-01-01T00:00:00Z"))
        .send()
        .await
        .expect("list");
    assert_eq!(total(past.into_inner()), 25);

    // `fields` is `explode: false`: the client's hook sends `fields=id,name` (clients/README.md).
    let sparse = api
        .list_agents()
        .fields(vec![AgentField::Id, AgentField::Name])
        .per_page(per_page(1))
        .send()
        .await
        .expect("list")
        .into_inner();
    let keys: Vec<String> = serde_json::to_value(&sparse.data[0])
        .expect("fieldset")
        .as_object()
        .expect("agent")
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, vec!["id", "name"]);

    // Deliberately malformed: the typed client refuses to send a cursor outside its pattern.
    let (status, body) = json(app.get("/v1/agents?cursor=garbage").await).await;
    assert_eq!((status, fields(&body)), (400, vec!["cursor".to_string()]));
    // A cursor is a position after an item: deleting that item falls back to the offset.
    let by_name = || {
        api.list_agents()
            .sort(ListAgentsSort::Name)
            .limit(per_page(2))
    };
    let first = by_name().send().await.expect("list").into_inner();
    let cursor = first.pagination.next_cursor.clone().expect("cursor");
    let gone = first.data[1].id.clone();
    assert_eq!(cursor, format!("2.{gone}"));
    let second = by_name()
        .cursor(cursor.as_str())
        .send()
        .await
        .expect("list")
        .into_inner();
    assert_eq!(second.data[0].name.as_deref(), Some("agent 02"));
    assert_eq!(second.pagination.page.get(), 2);
    let resp = api
        .delete_agent()
        .agent_id(gone.as_str())
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    let resumed = by_name()
        .cursor(cursor.as_str())
        .send()
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        resumed.data[0].name.as_deref(),
        Some("agent 03"),
        "offset 2 of the 24 left"
    );
});

backend_test!(etags_make_reads_conditional_and_writes_safe, |app| {
    let api = app.api();
    let agent = api
        .create_agent()
        .body(typed::<AgentInput>(
            json!({"name": "etag", "description": "to clear"}),
        ))
        .send()
        .await
        .expect("create");
    let id = agent.id.clone();
    let path = format!("/v1/agents/{id}");
    // progenitor decodes the bodiless 304 as `UnexpectedResponse` (clients/README.md).
    let not_modified = api
        .get_agent()
        .agent_id(id.as_str())
        .if_none_match("\"1\"")
        .send()
        .await
        .expect_err("304");
    assert!(
        agentplane_client::is_not_modified(&not_modified),
        "{not_modified:?}"
    );
    match &not_modified {
        agentplane_client::Error::UnexpectedResponse(r) => {
            assert_eq!(r.headers()["etag"], "\"1\"");
        }
        other => panic!("{other:?}"),
    }
    let fresh = api
        .get_agent()
        .agent_id(id.as_str())
        .if_none_match("\"0\"")
        .send()
        .await
        .expect("200");
    assert_eq!(fresh.status(), 200);

    // Raw: `null` clears a field, which the generated `Option` cannot say (clients/README.md).
    let (status, body) = json(
        app.req(Method::PATCH, &path)
            .header("If-Match", "\"1\"")
            .json(&json!({"description": null}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.get("description").is_none(), "null clears: {body}");
    assert_eq!(
        api_error(
            api.update_agent()
                .agent_id(id.as_str())
                .if_match("\"1\"")
                .body(typed::<AgentPatch>(json!({"name": "stale"})))
                .send()
                .await
        ),
        (412, "PRECONDITION_FAILED".to_string())
    );
    let replace = |if_match: &'static str| {
        api.replace_agent()
            .agent_id(id.as_str())
            .if_match(if_match)
            .body(typed::<AgentInput>(json!({"name": "x"})))
            .send()
    };
    assert_eq!(api_error(replace("\"1\"").await).0, 412);
    let replaced = replace("\"2\"").await.expect("put");
    assert_eq!(replaced.status(), 200);
    assert_eq!(etag(&replaced), "\"3\"");
    let after = api
        .get_agent()
        .agent_id(id.as_str())
        .send()
        .await
        .expect("get");
    assert_eq!(after.name, "x", "the refused writes changed nothing");
});

backend_test!(platform_tokens_are_stored_and_never_returned, |app| {
    let api = app.api();
    let secret = "discord-token-3a9f";
    let agent = api
        .create_agent()
        .body(typed::<AgentInput>(
            json!({"name": "bot", "platforms": {"discord": {"token": secret, "guild_id": "g"}}}),
        ))
        .send()
        .await
        .expect("create")
        .into_inner();
    assert!(!as_json(&agent).to_string().contains(secret));
    assert_eq!(agent.platforms["discord"].token_set, Some(true));
    assert!(agent.platforms["discord"].token.is_none());
    let id = agent.id.clone();
    let path = format!("/v1/agents/{id}");
    // A PATCH that resends the platform without its token keeps the stored token.
    let patched = api
        .update_agent()
        .agent_id(id.as_str())
        .body(typed::<AgentPatch>(
            json!({"platforms": {"discord": {"guild_id": "g2"}}}),
        ))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.platforms["discord"].token_set, Some(true));
    // Raw bodies: the secret must not appear anywhere in what the server sends.
    for text in [
        app.get(&path).await.text().await.expect("get"),
        app.get("/v1/agents").await.text().await.expect("list"),
        app.get("/v1/agents?fields=platforms")
            .await
            .text()
            .await
            .expect("list"),
    ] {
        assert!(!text.contains(secret), "a token leaked: {text}");
    }
    let store = app.store.clone();
    let stored = tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            let org = agent_org(conn);
            agentplane::db::agents::get(conn, &org, &id)
        })
    })
    .await
    .expect("join")
    .expect("row");
    assert!(
        stored.content.secrets.contains(secret),
        "the token is stored"
    );
    assert!(!stored.content.body.contains(secret));
});

fn agent_org(conn: &mut agentplane::db::DbConnection) -> String {
    use diesel::prelude::*;
    agentplane::db::schema::organizations::table
        .select(agentplane::db::schema::organizations::id)
        .first::<String>(conn)
        .expect("org")
}

backend_test!(concurrent_updates_all_land, |app| {
    let api = app.api();
    let agent = api
        .create_agent()
        .body(typed::<AgentInput>(json!({"name": "contended"})))
        .send()
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (api, id) = (api.clone(), agent.id.clone());
        tasks.push(tokio::spawn(async move {
            api.update_agent()
                .agent_id(id.as_str())
                .body(typed::<AgentPatch>(json!({"tags": [format!("t{i}")]})))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for task in tasks {
        assert_eq!(
            task.await.expect("join").expect("response"),
            200,
            "no update is refused or lost"
        );
    }
    let after = api
        .get_agent()
        .agent_id(agent.id.as_str())
        .send()
        .await
        .expect("get");
    assert_eq!(after.version.get(), 17);
});

backend_test!(idempotency_keys_replay_the_first_create, |app| {
    let api = app.api();
    fn post<'a>(
        api: &'a agentplane_client::Client, key: &str, name: &str,
    ) -> agentplane_client::builder::CreateAgent<'a> {
        api.create_agent()
            .idempotency_key(key)
            .body(typed::<AgentInput>(json!({"name": name})))
    }
    let first = post(&api, "key-1", "once").send().await.expect("post");
    assert_eq!(first.status(), 201);
    let again = post(&api, "key-1", "once").send().await.expect("retry");
    assert_eq!(
        (again.status().as_u16(), &again.id),
        (201, &first.id),
        "a retry creates nothing new"
    );
    assert_eq!(
        api_error(post(&api, "key-1", "other").send().await),
        (409, "IDEMPOTENCY_KEY_REUSED".to_string())
    );

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let resp = post(&api, "key-2", "racing").send().await.expect("post");
            (resp.status().as_u16(), resp.into_inner().id)
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        let (status, id) = task.await.expect("join");
        assert_eq!(status, 201);
        ids.insert(id);
    }
    assert_eq!(ids.len(), 1, "concurrent retries agree on one agent");
    let list = api.list_agents().send().await.expect("list");
    assert_eq!(list.pagination.total, 2);

    // Other organizations have their own key space.
    let other = app
        .key_for(
            "idem-other",
            "olga",
            agentplane_api::models::Role::Admin,
            None,
        )
        .await;
    let theirs = post(&app.api_as(&other), "key-1", "once")
        .send()
        .await
        .expect("post");
    assert_eq!(theirs.status(), 201);
    assert_ne!(theirs.id, first.id);
});
