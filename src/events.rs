//! The event log: what happened in an organization, as one table every consumer reads.
//!
//! Producers call [`publish`] INSIDE their own write transaction: it inserts the event row
//! and one outbox delivery per active webhook whose patterns match, so the change, its event
//! and its deliveries commit or vanish together. After the commit the producer calls
//! [`EventBus::wake`], which wakes the in-process consumers (the webhook delivery worker and
//! every `/v1/stream` socket); consumers also poll, so events written by another replica
//! arrive too, a moment later.
//!
//! # Wiring a new producer (the seam)
//!
//! ```ignore
//! let event = store.run(move |conn| crate::db::write_transaction(conn, |conn| {
//!     /* … the change … */
//!     crate::events::publish(conn, &org, "execution.completed", Some(&exec_id), json!({ … }))
//! })).await?;
//! handlers.events.wake();
//! ```
//!
//! The types are the spec's `EventType` enum ([`CATALOG`]); `execution.*`,
//! `simulation.completed` and `evaluation.completed` are in the catalog (webhooks can
//! subscribe to them today) for the branches that produce them. A one-off target, such as a
//! simulation's `notification_webhook`, goes through the same outbox with
//! [`crate::webhooks::enqueue_adhoc`]. One subject's progress (an execution's stream) is a
//! [`Tail`] with [`EventFilter::subject_id`] set.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::db::events::{self as store, EventFilter, EventRow};
use crate::db::webhooks::{self as hooks, DeliveryRow};
use crate::db::{DbConnection, Store, StoreResult};

/// Every event type, as the spec's `EventType` lists them.
pub const CATALOG: &[&str] = &[
    "agent.created",
    "agent.updated",
    "agent.deleted",
    "knowledge.sync.completed",
    "execution.started",
    "execution.completed",
    "execution.failed",
    "execution.requires_action",
    "simulation.completed",
    "evaluation.completed",
    "webhook.ping",
];

/// Types a subscription receives only when it names them exactly (not through `*` or a
/// wildcard): a ping goes to the one webhook being tested.
const DIRECT_ONLY: &[&str] = &["webhook.ping"];

/// Attempts a delivery gets before it is `failed`.
pub const MAX_ATTEMPTS: i64 = 12;

/// Wakes the in-process consumers of the event log and of the outbox.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (tx, _) = tokio::sync::watch::channel(0);
        Self {
            tx: std::sync::Arc::new(tx),
        }
    }

    /// Tells every consumer that new events or deliveries were committed.
    pub fn wake(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later [`EventBus::wake`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// Whether `pattern` (`agent.created`, `agent.*`, `*`) selects `event_type`.
pub fn matches(pattern: &str, event_type: &str) -> bool {
    if pattern == event_type {
        return true;
    }
    if DIRECT_ONLY.contains(&event_type) {
        return false;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => false,
    }
}

/// The store filter of a set of patterns (`None` when no pattern is given: nothing matches).
pub fn filter_of(patterns: &[String], subject_id: Option<String>) -> Option<EventFilter> {
    if patterns.is_empty() {
        return None;
    }
    let mut types = Vec::new();
    for t in CATALOG {
        if patterns.iter().any(|p| matches(p, t)) {
            types.push((*t).to_string());
        }
    }
    Some(EventFilter {
        types: Some(types),
        subject_id,
    })
}

/// The wire form of an event: the body of a webhook delivery, a `/v1/stream` message and an
/// item of `GET /v1/events`. `type` and `event` both carry the type (AIMatrix and CodexOS
/// name it differently).
pub fn to_json(row: &EventRow) -> Value {
    let data: Value = serde_json::from_str(&row.data).unwrap_or_else(|_| json!({}));
    json!({
        "id": row.id,
        "type": row.event_type,
        "event": row.event_type,
        "timestamp": row.created_at,
        "subject_id": row.subject_id,
        "data": data,
    })
}

/// Records an event and queues its deliveries, in the caller's transaction. Call
/// [`EventBus::wake`] after the commit.
pub fn publish(
    conn: &mut DbConnection, org_id: &str, event_type: &str, subject_id: Option<&str>, data: Value,
) -> StoreResult<EventRow> {
    let row = EventRow {
        id: crate::ids::new_id("evt"),
        org_id: org_id.to_string(),
        event_type: event_type.to_string(),
        subject_id: subject_id.map(str::to_string),
        data: data.to_string(),
        created_at: crate::ids::now(),
    };
    store::insert(conn, &row)?;
    for webhook in hooks::active(conn, org_id)? {
        let patterns: Vec<String> =
            serde_json::from_str(&webhook.content.events).unwrap_or_default();
        if patterns.iter().any(|p| matches(p, event_type)) {
            hooks::insert_delivery(conn, &new_delivery(&row, Some(webhook.id), None))?;
        }
    }
    Ok(row)
}

/// A pending delivery of `event`, due now.
pub fn new_delivery(
    event: &EventRow, webhook_id: Option<String>, target: Option<String>,
) -> DeliveryRow {
    let now = crate::ids::now();
    DeliveryRow {
        id: crate::ids::new_id("dlv"),
        org_id: event.org_id.clone(),
        webhook_id,
        target,
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        status: hooks::PENDING.to_string(),
        attempts: 0,
        next_attempt_at: Some(now.clone()),
        lease_owner: None,
        lease_expires_at: None,
        last_attempt_at: None,
        response_status: None,
        error: None,
        created_at: now,
        completed_at: None,
    }
}

/// How far back a tail re-reads: a transaction may commit an event a little older than the
/// newest one a tail has seen (ids and times are taken before commit).
const LOOKBACK: Duration = Duration::from_secs(10);
/// Events read per poll.
const BATCH: i64 = 200;

/// Follows one organization's events from a point in time, in order, each once.
///
/// Reusable for one subject's stream (`/v1/executions/{id}/stream`): set
/// [`EventFilter::subject_id`].
#[derive(Debug)]
pub struct Tail {
    store: Store,
    org_id: String,
    filter: Option<EventFilter>,
    /// Events at or after this time are read again on the next poll.
    since: String,
    /// What was sent, by id, with its time (pruned as `since` moves on).
    seen: HashMap<String, String>,
}

impl Tail {
    /// A tail of the events after now.
    pub fn new(store: Store, org_id: String, filter: Option<EventFilter>) -> Self {
        Self {
            store,
            org_id,
            filter,
            since: crate::ids::now(),
            seen: HashMap::new(),
        }
    }

    /// Changes which events are followed (a `subscribe` message); later polls use it.
    pub fn set_filter(&mut self, filter: Option<EventFilter>) {
        self.filter = filter;
    }

    /// The events not yet returned, oldest first.
    pub async fn poll(&mut self) -> StoreResult<Vec<EventRow>> {
        let Some(filter) = self.filter.clone() else {
            return Ok(Vec::new());
        };
        let lookback = chrono::Duration::from_std(LOOKBACK).unwrap_or_default();
        let from = chrono::DateTime::parse_from_rfc3339(&self.since)
            .map(|t| crate::ids::format_time(t.with_timezone(&chrono::Utc) - lookback))
            .unwrap_or_else(|_| self.since.clone());
        let (store, org, since) = (self.store.clone(), self.org_id.clone(), from.clone());
        let rows = store
            .run(move |conn| store::since(conn, &org, &filter, &since, BATCH))
            .await?;
        let fresh: Vec<EventRow> = rows
            .into_iter()
            .filter(|r| !self.seen.contains_key(&r.id))
            .collect();
        for r in &fresh {
            self.seen.insert(r.id.clone(), r.created_at.clone());
            if r.created_at > self.since {
                self.since = r.created_at.clone();
            }
        }
        // Forget what the lookback window no longer reaches.
        self.seen.retain(|_, t| *t >= from);
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_types_wildcards_and_star() {
        let cases = [
            ("agent.created", "agent.created", true),
            ("agent.*", "agent.deleted", true),
            ("agent.*", "knowledge.sync.completed", false),
            ("knowledge.*", "knowledge.sync.completed", true),
            ("*", "execution.failed", true),
            ("agent.created", "agent.updated", false),
            // A ping reaches only the webhook tested, never through a wildcard.
            ("*", "webhook.ping", false),
            ("webhook.*", "webhook.ping", false),
            ("webhook.ping", "webhook.ping", true),
        ];
        for (pattern, event_type, matched) in cases {
            assert_eq!(
                matches(pattern, event_type),
                matched,
                "{pattern} ~ {event_type}"
            );
        }
    }

    #[test]
    fn filters_expand_patterns_over_the_catalog() {
        assert!(filter_of(&[], None).is_none());
        let f = filter_of(&["agent.*".into(), "execution.failed".into()], None).expect("some");
        assert_eq!(
            f.types.as_deref(),
            Some(
                &[
                    "agent.created",
                    "agent.updated",
                    "agent.deleted",
                    "execution.failed"
                ]
                .map(String::from)[..]
            )
        );
    }

    #[test]
    fn the_catalog_is_the_specs_event_type_enum() {
        let spec: Value = serde_json::from_str(agentplane_api::OPENAPI_JSON).expect("spec");
        let listed: Vec<&str> = spec["components"]["schemas"]["EventType"]["enum"]
            .as_array()
            .expect("enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(listed, CATALOG);
    }

    #[test]
    fn the_wire_form_names_the_type_twice_and_parses_data() {
        let row = EventRow {
            id: "evt_1".into(),
            org_id: "org".into(),
            event_type: "agent.deleted".into(),
            subject_id: Some("agent_1".into()),
            data: r#"{"id":"agent_1","name":"a"}"#.into(),
            created_at: "2026-01-01T00:00:00.000000Z".into(),
        };
        let v = to_json(&row);
        assert_eq!(v["type"], "agent.deleted");
        assert_eq!(v["event"], "agent.deleted");
        assert_eq!(v["data"]["name"], "a");
        assert_eq!(v["timestamp"], "2026-01-01T00:00:00.000000Z");
    }
}
