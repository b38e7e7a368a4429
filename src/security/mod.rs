//! Security events, recorded as they happen.
//!
//! [`record`] is the one way in for events (authentication, keys, scopes, rate limits,
//! scans; the vault records its decrypted reads through it too). An event carries ids, never
//! a secret: callers pass what identifies the actor and the resource, not what was presented.

use serde_json::Value;

pub mod scan;

use crate::db::security::{self, SecurityEventRow};
use crate::db::{DbConnection, StoreResult};

/// What happened (the spec's `SecurityEventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    AuthenticationFailed,
    ApiKeyCreated,
    ApiKeyRevoked,
    ApiKeyUpdated,
    PermissionDenied,
    RateLimitExceeded,
    SecurityScanFindings,
    VaultSecretRead,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AuthenticationFailed => "authentication_failed",
            EventType::ApiKeyCreated => "api_key_created",
            EventType::ApiKeyRevoked => "api_key_revoked",
            EventType::ApiKeyUpdated => "api_key_updated",
            EventType::PermissionDenied => "permission_denied",
            EventType::RateLimitExceeded => "rate_limit_exceeded",
            EventType::SecurityScanFindings => "security_scan_findings",
            EventType::VaultSecretRead => "vault_secret_read",
        }
    }
}

/// How serious it is (the spec's `Severity`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_type: EventType,
    pub severity: Severity,
    pub message: String,
    pub key_id: Option<String>,
    pub user_id: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// A JSON object; never a secret.
    pub details: Value,
    pub request_id: Option<String>,
}

impl Event {
    /// An event with no actor, resource or details yet.
    pub fn new(event_type: EventType, severity: Severity, message: impl Into<String>) -> Self {
        Event {
            event_type,
            severity,
            message: message.into(),
            key_id: None,
            user_id: None,
            resource_type: None,
            resource_id: None,
            details: Value::Object(Default::default()),
            request_id: None,
        }
    }

    /// The key and user that acted.
    pub fn by(mut self, key_id: &str, user_id: &str) -> Self {
        self.key_id = Some(key_id.to_string());
        self.user_id = Some(user_id.to_string());
        self
    }

    /// The resource involved.
    pub fn on(mut self, resource_type: &str, resource_id: &str) -> Self {
        self.resource_type = Some(resource_type.to_string());
        self.resource_id = Some(resource_id.to_string());
        self
    }

    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn request(mut self, request_id: &str) -> Self {
        self.request_id = (!request_id.is_empty()).then(|| request_id.to_string());
        self
    }
}

/// Records `event` for `org_id` (`None` when nothing identified an organization), in the
/// caller's transaction if it has one. Returns the event's id.
pub fn record(conn: &mut DbConnection, org_id: Option<&str>, event: Event) -> StoreResult<String> {
    let details = match event.details {
        Value::Object(_) => event.details,
        other => serde_json::json!({ "value": other }),
    };
    let row = SecurityEventRow {
        id: crate::ids::new_id("sev"),
        org_id: org_id.map(str::to_string),
        event_type: event.event_type.as_str().to_string(),
        severity: event.severity.as_str().to_string(),
        message: event.message,
        key_id: event.key_id,
        user_id: event.user_id,
        resource_type: event.resource_type,
        resource_id: event.resource_id,
        details: details.to_string(),
        request_id: event.request_id,
        created_at: crate::ids::now(),
    };
    security::insert_event(conn, &row)?;
    Ok(row.id)
}

/// Records an event off the request's path; a failure to record is logged, not raised.
pub async fn record_detached(store: &crate::db::Store, org_id: Option<String>, event: Event) {
    let kind = event.event_type.as_str();
    if let Err(e) = store
        .run(move |conn| record(conn, org_id.as_deref(), event))
        .await
    {
        tracing::warn!(error = %e, event = kind, "cannot record a security event");
    }
}
