//! Event rows: the organization's event log.

use diesel::prelude::*;

use super::schema::events as e;
use super::{DbConnection, MultiBackend, StoreError, StoreResult};

/// One row of `events`.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = e)]
pub struct EventRow {
    pub id: String,
    pub org_id: String,
    pub event_type: String,
    pub subject_id: Option<String>,
    /// The payload, JSON.
    pub data: String,
    pub created_at: String,
}

/// A page of a newest-first list: after the id `after_id` (cursor), else from `offset`.
pub use super::sql::Page;

/// Which events a list or a tail wants.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only these types (`None`: every type; empty: none).
    pub types: Option<Vec<String>>,
    pub subject_id: Option<String>,
}

fn filtered<'a>(org_id: &'a str, f: &'a EventFilter) -> e::BoxedQuery<'a, MultiBackend> {
    let mut query = e::table.filter(e::org_id.eq(org_id)).into_boxed();
    if let Some(types) = &f.types {
        query = query.filter(e::event_type.eq_any(types));
    }
    if let Some(s) = &f.subject_id {
        query = query.filter(e::subject_id.eq(s));
    }
    query
}

pub fn insert(conn: &mut DbConnection, row: &EventRow) -> StoreResult<()> {
    diesel::insert_into(e::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<EventRow> {
    e::table
        .filter(e::org_id.eq(org_id))
        .filter(e::id.eq(id))
        .select(EventRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

/// An event by id alone (the delivery worker, which already knows the organization).
pub fn by_id(conn: &mut DbConnection, id: &str) -> StoreResult<EventRow> {
    e::table
        .filter(e::id.eq(id))
        .select(EventRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

/// A page of events, newest first, and the number matching.
pub fn list(
    conn: &mut DbConnection,
    org_id: &str,
    f: &EventFilter,
    page: &Page,
) -> StoreResult<(Vec<EventRow>, i64)> {
    let total: i64 = filtered(org_id, f).count().get_result(conn)?;
    let mut query = filtered(org_id, f).order(e::id.desc()).limit(page.limit);
    match &page.after_id {
        Some(after) => query = query.filter(e::id.lt(after.clone())),
        None if page.offset > 0 => query = query.offset(page.offset),
        None => {}
    }
    let rows = query.select(EventRow::as_select()).load(conn)?;
    Ok((rows, total))
}

/// Events created at or after `since`, oldest first (tailing). Callers drop the ones they
/// have seen: a transaction that committed late can add an event older than the newest seen.
pub fn since(
    conn: &mut DbConnection,
    org_id: &str,
    f: &EventFilter,
    since: &str,
    limit: i64,
) -> StoreResult<Vec<EventRow>> {
    filtered(org_id, f)
        .filter(e::created_at.ge(since))
        .order((e::created_at.asc(), e::id.asc()))
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)
        .map_err(StoreError::from)
}
