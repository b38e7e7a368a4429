//! Event rows: the organization's event log.

use diesel::prelude::*;

use super::schema::events as e;
use super::sql::{FilterIf, Page};
use super::{DbConnection, MultiBackend, StoreResult};

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

super::crud::resource_table!(events, EventRow);

/// Which events a list or a tail wants.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only these types (`None`: every type; empty: none).
    pub types: Option<Vec<String>>,
    pub subject_id: Option<String>,
}

fn filtered<'a>(org_id: &'a str, f: &'a EventFilter) -> e::BoxedQuery<'a, MultiBackend> {
    e::table
        .filter(e::org_id.eq(org_id))
        .into_boxed()
        .filter_if(f.types.as_ref().map(|types| e::event_type.eq_any(types)))
        .filter_if(f.subject_id.as_deref().map(|s| e::subject_id.eq(s)))
}

/// An event by id alone (the delivery worker, which already knows the organization).
pub fn by_id(conn: &mut DbConnection, id: &str) -> StoreResult<EventRow> {
    Ok(e::table
        .filter(e::id.eq(id))
        .select(EventRow::as_select())
        .first(conn)?)
}

/// A page of events, newest first, and the number matching.
pub fn list(
    conn: &mut DbConnection, org_id: &str, f: &EventFilter, page: &Page,
) -> StoreResult<(Vec<EventRow>, i64)> {
    super::crud::newest_first!(conn, e, EventRow, || filtered(org_id, f), page)
}

/// Events created at or after `since`, oldest first (tailing). Callers drop the ones they
/// have seen: a transaction that committed late can add an event older than the newest seen.
pub fn since(
    conn: &mut DbConnection, org_id: &str, f: &EventFilter, since: &str, limit: i64,
) -> StoreResult<Vec<EventRow>> {
    super::crud::oldest_from!(conn, e, EventRow, filtered(org_id, f), since, limit)
}
