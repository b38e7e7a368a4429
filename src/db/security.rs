//! Security events: what happened, how serious it is, and to whom, as rows.

use diesel::prelude::*;

use super::schema::security_events as e;
use super::sql::{FilterIf, Page};
use super::types::{Json, text_enum};
use super::{DbConnection, StoreResult};

text_enum! {
    /// What happened (the spec's `SecurityEventType`).
    pub enum EventType {
        AuthenticationFailed = "authentication_failed",
        ApiKeyCreated = "api_key_created",
        ApiKeyRevoked = "api_key_revoked",
        ApiKeyUpdated = "api_key_updated",
        PermissionDenied = "permission_denied",
        RateLimitExceeded = "rate_limit_exceeded",
        SecurityScanFindings = "security_scan_findings",
        VaultSecretRead = "vault_secret_read",
    }
}

text_enum! {
    /// How serious it is (the spec's `Severity`), least first.
    #[derive(PartialOrd, Ord)]
    pub enum Severity {
        Low = "low",
        Medium = "medium",
        High = "high",
        Critical = "critical",
    }
}

impl Severity {
    /// The rank a scan's `max_severity` stores: 1 (low) to 4 (critical); 0 is "nothing found".
    pub fn rank(self) -> i64 {
        match self {
            Severity::Low => 1,
            Severity::Medium => 2,
            Severity::High => 3,
            Severity::Critical => 4,
        }
    }
}

/// One recorded event. It carries ids, never a secret.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = e)]
pub struct SecurityEventRow {
    pub id: String,
    /// `None` when nothing identified an organization.
    pub org_id: Option<String>,
    pub event_type: EventType,
    pub severity: Severity,
    pub message: String,
    pub key_id: Option<String>,
    pub user_id: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// A JSON object.
    pub details: Json<serde_json::Value>,
    pub request_id: Option<String>,
    pub created_at: String,
}

super::crud::identified!(SecurityEventRow);

super::crud::inserts!(insert_event, e, SecurityEventRow);

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub severity: Option<Severity>,
    pub event_type: Option<EventType>,
    /// Only events created at or after this time (storage format).
    pub since: Option<String>,
}

/// A page of the organization's events, newest first, and how many match.
pub fn list_events(
    conn: &mut DbConnection, org_id: &str, q: &EventQuery, page: &Page,
) -> StoreResult<(Vec<SecurityEventRow>, i64)> {
    let filtered = || {
        e::table
            .filter(e::org_id.eq(org_id))
            .into_boxed()
            .filter_if(q.severity.map(|v| e::severity.eq(v)))
            .filter_if(q.event_type.map(|v| e::event_type.eq(v)))
            .filter_if(q.since.as_deref().map(|v| e::created_at.ge(v)))
    };
    super::crud::newest_first!(conn, e, SecurityEventRow, filtered, page)
}

/// The organization's event `id`.
pub fn get_event(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<SecurityEventRow> {
    let q = e::table.filter(e::org_id.eq(org_id)).filter(e::id.eq(id));
    Ok(q.select(SecurityEventRow::as_select()).first(conn)?)
}
