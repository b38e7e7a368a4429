//! Security events, recorded as they happen.
//!
//! [`record`] is the one way in for events (authentication, keys, scopes, rate limits,
//! scans; the vault records its decrypted reads through it too). An event carries ids, never
//! a secret: callers pass what identifies the actor and the resource, not what was presented.

use serde_json::Value;

pub mod failures;
pub mod scan;

use crate::db::security::{self, SecurityEventRow};
use crate::db::types::Json;
use crate::db::{DbConnection, StoreResult};

pub use crate::db::security::{EventType, Severity};

/// An event to record: the row [`record`] writes, once it has given it an id, an organization
/// and a time.
#[derive(Debug, Clone)]
pub struct Event(SecurityEventRow);

impl Event {
    /// An event with no actor, resource or details yet.
    pub fn new(event_type: EventType, severity: Severity, message: impl Into<String>) -> Self {
        Event(SecurityEventRow {
            id: String::new(),
            org_id: None,
            event_type,
            severity,
            message: message.into(),
            key_id: None,
            user_id: None,
            resource_type: None,
            resource_id: None,
            details: Json(Value::Object(Default::default())),
            request_id: None,
            created_at: String::new(),
        })
    }

    /// The key and user that acted.
    pub fn by(mut self, key_id: &str, user_id: &str) -> Self {
        self.0.key_id = Some(key_id.to_string());
        self.0.user_id = Some(user_id.to_string());
        self
    }

    /// The resource involved.
    pub fn on(mut self, resource_type: &str, resource_id: &str) -> Self {
        self.0.resource_type = Some(resource_type.to_string());
        self.0.resource_id = Some(resource_id.to_string());
        self
    }

    /// What else identifies it: a JSON object (another value is wrapped as `{"value": …}`);
    /// never a secret.
    pub fn details(mut self, details: Value) -> Self {
        self.0.details = Json(match details {
            Value::Object(_) => details,
            other => serde_json::json!({ "value": other }),
        });
        self
    }

    /// The request it happened in (none when `request_id` is empty).
    pub fn request(mut self, request_id: &str) -> Self {
        self.0.request_id = (!request_id.is_empty()).then(|| request_id.to_string());
        self
    }
}

/// Records `event` for `org_id` (`None` when nothing identified an organization), in the
/// caller's transaction if it has one. Returns the event's id.
pub fn record(conn: &mut DbConnection, org_id: Option<&str>, event: Event) -> StoreResult<String> {
    let row = SecurityEventRow {
        id: crate::ids::new_id("sev"),
        org_id: org_id.map(str::to_string),
        created_at: crate::ids::now(),
        ..event.0
    };
    security::insert_event(conn, &row)?;
    Ok(row.id)
}

/// Records an event off the request's path; a failure to record is logged, not raised.
pub async fn record_detached(store: &crate::db::Store, org_id: Option<String>, event: Event) {
    let kind = event.0.event_type.as_str();
    if let Err(e) = store
        .run(move |conn| record(conn, org_id.as_deref(), event))
        .await
    {
        tracing::warn!(error = %e, event = kind, "cannot record a security event");
    }
}
