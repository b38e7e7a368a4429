//! Stored security scans ([`crate::security::scan`]).

use diesel::prelude::*;

use super::schema::security_scans as s;
use super::{DbConnection, StoreError, StoreResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = s)]
pub struct ScanRow {
    pub id: String,
    pub org_id: String,
    pub agent_id: String,
    pub agent_version: i64,
    /// A JSON array of findings (never a secret).
    pub findings: String,
    pub critical_count: i64,
    pub high_count: i64,
    pub medium_count: i64,
    pub low_count: i64,
    /// 0 when nothing was found, else 1 (low) to 4 (critical).
    pub max_severity: i64,
    pub created_at: String,
}

pub fn insert(conn: &mut DbConnection, row: &ScanRow) -> StoreResult<()> {
    diesel::insert_into(s::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<ScanRow> {
    s::table
        .filter(s::org_id.eq(org_id))
        .filter(s::id.eq(id))
        .select(ScanRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

/// Which scans to list.
#[derive(Debug, Clone, Default)]
pub struct ScanQuery {
    pub agent_id: Option<String>,
    /// Only scans whose worst finding is at least this (1 low … 4 critical).
    pub min_severity: Option<i64>,
    pub after_id: Option<String>,
    pub offset: i64,
    pub limit: i64,
}

/// A page of the organization's scans, newest first, and how many match.
pub fn list(
    conn: &mut DbConnection,
    org_id: &str,
    q: &ScanQuery,
) -> StoreResult<(Vec<ScanRow>, i64)> {
    let filtered = || {
        let mut query = s::table
            .filter(s::org_id.eq(org_id.to_string()))
            .into_boxed();
        if let Some(v) = &q.agent_id {
            query = query.filter(s::agent_id.eq(v.clone()));
        }
        if let Some(v) = q.min_severity {
            query = query.filter(s::max_severity.ge(v));
        }
        query
    };
    let total: i64 = filtered().count().get_result(conn)?;
    let mut query = filtered().order(s::id.desc()).limit(q.limit);
    match &q.after_id {
        Some(id) => query = query.filter(s::id.lt(id.clone())),
        None if q.offset > 0 => query = query.offset(q.offset),
        None => {}
    }
    let rows = query.select(ScanRow::as_select()).load(conn)?;
    Ok((rows, total))
}
