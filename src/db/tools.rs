//! Tool rows and their queries. Type-specific configuration is one JSON document in `body`;
//! an API tool's secret headers are sealed ([`crate::crypto`]) in `secrets`, apart from every
//! read path that returns the tool.

use diesel::prelude::*;

use super::schema::tools;
use super::sql::{FilterIf, Page};
use super::{DbConnection, StoreResult};

/// One row of `tools`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = tools)]
pub struct ToolRow {
    pub id: String,
    pub org_id: String,
    /// The columns an update writes.
    #[diesel(embed)]
    pub content: ToolChanges,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns an update writes.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
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
    conn: &mut DbConnection, org_id: &str, tool_type: Option<&str>, page: &Page,
) -> StoreResult<(Vec<ToolRow>, i64)> {
    let filtered = || {
        let q = tools::table.filter(tools::org_id.eq(org_id)).into_boxed();
        q.filter_if(tool_type.map(|t| tools::tool_type.eq(t)))
    };
    super::crud::newest_first!(conn, tools, ToolRow, filtered, page, by created_at)
}
