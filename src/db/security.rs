//! Security events.

use diesel::prelude::*;

use super::schema::security_events as e;
use super::{DbConnection, StoreResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = e)]
pub struct SecurityEventRow {
    pub id: String,
    pub org_id: Option<String>,
    pub event_type: String,
    pub severity: String,
    pub message: String,
    pub key_id: Option<String>,
    pub user_id: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// A JSON object.
    pub details: String,
    pub request_id: Option<String>,
    pub created_at: String,
}

pub fn insert_event(conn: &mut DbConnection, row: &SecurityEventRow) -> StoreResult<()> {
    diesel::insert_into(e::table).values(row).execute(conn)?;
    Ok(())
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub severity: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<String>,
    pub after_id: Option<String>,
    pub offset: i64,
    pub limit: i64,
}

/// A page of the organization's events, newest first, and how many match.
pub fn list_events(
    conn: &mut DbConnection,
    org_id: &str,
    q: &EventQuery,
) -> StoreResult<(Vec<SecurityEventRow>, i64)> {
    let filtered = || {
        let mut query = e::table
            .filter(e::org_id.eq(org_id.to_string()))
            .into_boxed();
        if let Some(v) = &q.severity {
            query = query.filter(e::severity.eq(v.clone()));
        }
        if let Some(v) = &q.event_type {
            query = query.filter(e::event_type.eq(v.clone()));
        }
        if let Some(v) = &q.since {
            query = query.filter(e::created_at.ge(v.clone()));
        }
        query
    };
    let total: i64 = filtered().count().get_result(conn)?;
    let mut query = filtered().order(e::id.desc()).limit(q.limit);
    match &q.after_id {
        Some(id) => query = query.filter(e::id.lt(id.clone())),
        None if q.offset > 0 => query = query.offset(q.offset),
        None => {}
    }
    let rows = query.select(SecurityEventRow::as_select()).load(conn)?;
    Ok((rows, total))
}
