//! Tool rows and their queries. Type-specific configuration is one JSON document in `body`;
//! an API tool's secret headers are sealed ([`crate::crypto`]) in `secrets`, apart from every
//! read path that returns the tool.

use diesel::prelude::*;

use super::schema::tools;
use super::sql::Page;
use super::{DbConnection, Found, StoreResult};

/// One row of `tools`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = tools)]
pub struct ToolRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub tool_type: String,
    pub description: Option<String>,
    pub body: String,
    pub secrets: String,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns an update writes.
#[derive(Debug, Clone, AsChangeset)]
#[diesel(table_name = tools, treat_none_as_null = true)]
pub struct ToolChanges {
    pub name: String,
    pub tool_type: String,
    pub description: Option<String>,
    pub body: String,
    pub secrets: String,
}

super::crud::resource_table!(tools, ToolRow, versioned ToolChanges);

/// A page of tools, newest first, optionally of one type.
pub fn list(
    conn: &mut DbConnection,
    org_id: &str,
    tool_type: Option<&str>,
    page: &Page,
) -> StoreResult<(Vec<ToolRow>, i64)> {
    let base = || {
        let mut q = tools::table
            .filter(tools::org_id.eq(org_id.to_string()))
            .into_boxed();
        if let Some(t) = tool_type {
            q = q.filter(tools::tool_type.eq(t.to_string()));
        }
        q
    };
    let total: i64 = base().count().get_result(conn)?;
    let anchor = match &page.after_id {
        Some(id) => get(conn, org_id, id)
            .found()?
            .map(|row| (row.created_at, row.id)),
        None => None,
    };
    let mut query = base();
    if let Some((created, id)) = &anchor {
        query = query.filter(
            tools::created_at.lt(created.clone()).or(tools::created_at
                .eq(created.clone())
                .and(tools::id.lt(id.clone()))),
        );
    }
    let mut query = query
        .order((tools::created_at.desc(), tools::id.desc()))
        .limit(page.limit);
    if anchor.is_none() && page.offset > 0 {
        query = query.offset(page.offset);
    }
    let rows = query.select(ToolRow::as_select()).load(conn)?;
    Ok((rows, total))
}
