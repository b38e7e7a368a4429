//! Stored security scans ([`crate::security::scan`]).

use diesel::prelude::*;

use super::schema::security_scans as s;
use super::sql::{FilterIf, Page};
use super::{DbConnection, StoreResult};

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

super::crud::resource_table!(security_scans, ScanRow);

/// Which scans to list.
#[derive(Debug, Clone, Default)]
pub struct ScanQuery {
    pub agent_id: Option<String>,
    /// Only scans whose worst finding is at least this (1 low … 4 critical).
    pub min_severity: Option<i64>,
}

/// A page of the organization's scans, newest first, and how many match.
pub fn list(
    conn: &mut DbConnection, org_id: &str, q: &ScanQuery, page: &Page,
) -> StoreResult<(Vec<ScanRow>, i64)> {
    let filtered = || {
        s::table
            .filter(s::org_id.eq(org_id))
            .into_boxed()
            .filter_if(q.agent_id.as_deref().map(|v| s::agent_id.eq(v)))
            .filter_if(q.min_severity.map(|v| s::max_severity.ge(v)))
    };
    super::crud::newest_first!(conn, s, ScanRow, filtered, page)
}
