//! Usage statistics, cost analysis and conversation analytics over one fixture of usage
//! records, conversations and messages: the same figures on both backends, windows, filters,
//! isolation, scopes and bad input.

use agentplane::db::executions::{UsageRow, insert_usage};
use agentplane::db::{DbConnection, StoreError, StoreResult};
use agentplane_api::models::{Role, Scope};
use diesel::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, json};
use crate::twins::agentplane_org;

#[allow(clippy::too_many_arguments)]
fn record(
    conn: &mut DbConnection, org: &str, agent: &str, model: &str, execution: Option<&str>,
    conversation: Option<&str>, tokens: (i64, i64), cost_nano_usd: i64, at: &str,
) -> StoreResult<()> {
    insert_usage(
        conn,
        &UsageRow {
            id: agentplane::ids::new_id("usage"),
            org_id: org.to_string(),
            agent_id: agent.to_string(),
            model_id: model.to_string(),
            execution_id: execution.map(str::to_string),
            conversation_id: conversation.map(str::to_string),
            message_id: conversation.map(|_| agentplane::ids::new_id("msg")),
            input_tokens: tokens.0,
            output_tokens: tokens.1,
            cost_nano_usd,
            created_at: at.to_string(),
        },
    )
}

fn conversation(
    conn: &mut DbConnection, org: &str, id: &str, agent: &str, at: &str,
    messages: &[(&str, &str, &str)],
) -> StoreResult<()> {
    use agentplane::db::schema::{conversations as c, messages as m};
    diesel::insert_into(c::table)
        .values((
            c::id.eq(id),
            c::org_id.eq(org),
            c::agent_id.eq(agent),
            c::metadata.eq("{}"),
            c::message_count.eq(messages.len() as i64),
            c::version.eq(1i64),
            c::created_at.eq(at),
            c::updated_at.eq(at),
        ))
        .execute(conn)?;
    for (role, content, when) in messages {
        diesel::insert_into(m::table)
            .values((
                m::id.eq(agentplane::ids::new_id("msg")),
                m::org_id.eq(org),
                m::conversation_id.eq(id),
                m::role.eq(*role),
                m::content.eq(*content),
                m::input_tokens.eq(0i64),
                m::output_tokens.eq(0i64),
                m::created_at.eq(*when),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Two agents and two models of ours over three days, and one record of another organization.
async fn fixture(app: &TestApp) {
    app.key_for("globex", "gina", Role::Admin, None).await;
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            let org = agentplane_org(conn)?;
            let other = agentplane::db::identity::organization_by_name(conn, "globex")?
                .map(|o| o.id)
                .ok_or(StoreError::NotFound)?;
            let d1 = "2026-01-14T09:00:00.000000Z";
            let d2 = "2026-01-15T10:30:00.000000Z";
            let d3 = "2026-01-16T23:59:59.500000Z";
            record(
                conn,
                &org,
                "agent_a",
                "model_x",
                Some("exec_1"),
                None,
                (1000, 200),
                12_000_000,
                d1,
            )?;
            record(
                conn,
                &org,
                "agent_a",
                "model_x",
                Some("exec_2"),
                None,
                (500, 100),
                6_000_000,
                d2,
            )?;
            record(
                conn,
                &org,
                "agent_a",
                "model_y",
                None,
                Some("conv_1"),
                (100, 50),
                1_500,
                d2,
            )?;
            record(
                conn,
                &org,
                "agent_b",
                "model_y",
                Some("exec_3"),
                None,
                (2000, 1000),
                3_000_000,
                d3,
            )?;
            record(
                conn,
                &other,
                "agent_z",
                "model_x",
                Some("exec_9"),
                None,
                (9999, 9999),
                999_000_000,
                d2,
            )?;
            conversation(
                conn,
                &org,
                "conv_1",
                "agent_a",
                d1,
                &[
                    ("user", "Hello there", d1),
                    ("assistant", "Hi! How can I help?", d1),
                    ("user", "Reset my password", d2),
                ],
            )?;
            conversation(
                conn,
                &org,
                "conv_2",
                "agent_a",
                d2,
                &[("user", "Pricing?", d2)],
            )?;
            conversation(conn, &org, "conv_3", "agent_b", d3, &[])?;
            conversation(
                conn,
                &other,
                "conv_9",
                "agent_z",
                d2,
                &[("user", "other org", d2)],
            )?;
            Ok(())
        })
    })
    .await
    .expect("join")
    .expect("fixture");
}

async fn get(app: &TestApp, path: &str) -> Value {
    let (status, body) = json(app.get(path).await).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

backend_test!(usage_stats_aggregate_in_the_database, |app| {
    fixture(&app).await;
    let all = get(&app, "/v1/usage/stats").await;
    assert_eq!(all["group_by"], "day");
    assert_eq!(
        all["usage"],
        json!({"records": 4, "executions": 3, "conversations": 1, "messages": 1,
               "input_tokens": 3600, "output_tokens": 1350, "total_tokens": 4950})
    );
    assert_eq!(all["total_tokens"], 4950);
    assert_eq!(all["costs"]["total_nano_usd"], 21_001_500);
    assert_eq!(all["total_cost"], 0.0210015);
    let days: Vec<&str> = all["breakdown"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|g| g["key"].as_str())
        .collect();
    assert_eq!(days, ["2026-01-14", "2026-01-15", "2026-01-16"]);
    assert_eq!(
        all["by_model"]["model_x"],
        json!({"tokens": 1800, "cost": 0.018})
    );
    assert_eq!(all["period"], json!({"start": null, "end": null}));

    let by_agent = get(&app, "/v1/usage/stats?group_by=agent").await;
    assert_eq!(by_agent["breakdown"][0]["key"], "agent_a");
    assert_eq!(by_agent["breakdown"][0]["cost_nano_usd"], 18_001_500);
    assert_eq!(by_agent["breakdown"][0]["records"], 3);
    assert_eq!(by_agent["breakdown"][1]["key"], "agent_b");

    // Windows: dates are whole days, both seed names work, the narrower bound wins.
    let window = get(
        &app,
        "/v1/usage/stats?from=2026-01-15&to=2026-01-15&group_by=model",
    )
    .await;
    assert_eq!(window["usage"]["records"], 2);
    assert_eq!(window["period"]["start"], "2026-01-15T00:00:00.000000Z");
    assert_eq!(window["period"]["end"], "2026-01-15T23:59:59.999999Z");
    let seeds = get(
        &app,
        "/v1/usage/stats?start_date=2026-01-15&end_date=2026-01-16T23:59:59Z",
    )
    .await;
    assert_eq!(
        seeds["usage"]["records"], 2,
        "23:59:59.5 is after the end: {seeds}"
    );
    let narrow = get(
        &app,
        "/v1/usage/stats?start_date=2026-01-01&from=2026-01-16",
    )
    .await;
    assert_eq!(narrow["usage"]["records"], 1);
    let hours = get(&app, "/v1/usage/stats?group_by=hour&agent_id=agent_a").await;
    assert_eq!(hours["usage"]["records"], 3);
    assert_eq!(hours["agent_id"], "agent_a");
    assert_eq!(hours["breakdown"][0]["key"], "2026-01-14T09");
    let month = get(&app, "/v1/usage/stats?group_by=month").await;
    assert_eq!(
        month["breakdown"],
        json!([{"key": "2026-01", "records": 4, "input_tokens": 3600, "output_tokens": 1350, "total_tokens": 4950, "cost": 0.0210015, "cost_nano_usd": 21_001_500}])
    );
    let empty = get(&app, "/v1/usage/stats?from=2027-01-01").await;
    assert_eq!(
        (
            empty["usage"]["records"].as_i64(),
            empty["breakdown"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
});

backend_test!(costs_and_conversation_analytics, |app| {
    fixture(&app).await;
    let agents = get(&app, "/v1/usage/costs").await;
    assert_eq!(agents["entity_type"], "agent");
    assert_eq!(agents["total_cost_nano_usd"], 21_001_500);
    assert_eq!(agents["entries"].as_array().map(Vec::len), Some(2));
    let one = get(&app, "/v1/usage/costs?entity_type=agent&entity_id=agent_b").await;
    assert_eq!(one["entity_id"], "agent_b");
    assert_eq!(one["total_cost"], 0.003);
    assert_eq!(
        one["by_day"],
        json!([{"date": "2026-01-16", "total_tokens": 3000, "cost": 0.003, "cost_nano_usd": 3_000_000}])
    );
    let executions = get(&app, "/v1/usage/costs?entity_type=execution").await;
    assert_eq!(
        executions["entries"].as_array().map(Vec::len),
        Some(3),
        "the conversation's record has no execution"
    );
    assert_eq!(executions["entries"][0]["entity_id"], "exec_1");
    let conversations = get(
        &app,
        "/v1/usage/costs?entity_type=conversation&from=2026-01-15",
    )
    .await;
    assert_eq!(conversations["entries"][0]["entity_id"], "conv_1");
    let theirs = get(&app, "/v1/usage/costs?entity_type=agent&entity_id=agent_z").await;
    assert_eq!(
        (
            theirs["total_cost_nano_usd"].as_i64(),
            theirs["entries"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );

    let a = get(&app, "/v1/analytics/conversations").await;
    assert_eq!(a["total_conversations"], 3);
    assert_eq!(a["total_messages"], 4);
    assert_eq!(a["average_messages_per_conversation"], 4.0 / 3.0);
    assert_eq!(a["average_message_length"], (11 + 19 + 17 + 8) as f64 / 4.0);
    assert_eq!(a["messages_by_role"], json!({"assistant": 1, "user": 3}));
    assert_eq!(
        a["by_agent"][0],
        json!({"agent_id": "agent_a", "conversations": 2, "messages": 4, "average_messages_per_conversation": 2.0})
    );
    assert_eq!(
        a["by_agent"][1],
        json!({"agent_id": "agent_b", "conversations": 1, "messages": 0, "average_messages_per_conversation": 0.0})
    );
    assert_eq!(
        a["by_day"],
        json!([
            {"date": "2026-01-14", "conversations": 1, "messages": 2},
            {"date": "2026-01-15", "conversations": 1, "messages": 2},
            {"date": "2026-01-16", "conversations": 1, "messages": 0}
        ])
    );
    let later = get(
        &app,
        "/v1/analytics/conversations?from=2026-01-15&agent_id=agent_a",
    )
    .await;
    assert_eq!(
        (
            later["total_conversations"].as_i64(),
            later["total_messages"].as_i64()
        ),
        (Some(1), Some(2))
    );
});

backend_test!(usage_is_isolated_scoped_and_validated, |app| {
    fixture(&app).await;
    let other = app.key_for("globex", "gina", Role::Admin, None).await;
    let (_, theirs) = json(
        app.as_key(&other, Method::GET, "/v1/usage/stats")
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(theirs["usage"]["records"], 1);
    assert_eq!(theirs["costs"]["total_nano_usd"], 999_000_000);
    let (_, a) = json(
        app.as_key(&other, Method::GET, "/v1/analytics/conversations")
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(
        (
            a["total_conversations"].as_i64(),
            a["total_messages"].as_i64()
        ),
        (Some(1), Some(1))
    );

    let viewer = app.key_for("default", "vic", Role::Viewer, None).await;
    let (status, _) = json(
        app.as_key(&viewer, Method::GET, "/v1/usage/costs")
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 200);
    let agents_only = app
        .key_for("default", "ann", Role::Member, Some(&[Scope::ReadAgents]))
        .await;
    for path in [
        "/v1/usage/stats",
        "/v1/usage/costs",
        "/v1/analytics/conversations",
    ] {
        let (status, _) = json(
            app.as_key(&agents_only, Method::GET, path)
                .send()
                .await
                .expect("r"),
        )
        .await;
        assert_eq!(status, 403, "{path}");
    }
    for (path, field) in [
        ("/v1/usage/stats?group_by=week", "group_by"),
        ("/v1/usage/stats?from=yesterday", "from"),
        ("/v1/usage/stats?to=2026-13-01", "to"),
        ("/v1/usage/costs?entity_type=user", "entity_type"),
        (
            "/v1/analytics/conversations?end_date=2026-01-01T10:00:00%2B02:00",
            "end_date",
        ),
    ] {
        let (status, err) = json(app.get(path).await).await;
        assert_eq!(status, 400, "{path}: {err}");
        assert!(
            crate::support::fields(&err).iter().any(|f| f == field),
            "{path}: {err}"
        );
    }
});
