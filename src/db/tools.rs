//! Tool rows and their queries. Type-specific configuration is one JSON document in `body`;
//! an API tool's secret headers are sealed ([`crate::crypto`]) in `secrets`, apart from every
//! read path that returns the tool.

use diesel::prelude::*;

use super::schema::tools;

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

super::crud::list_by!(tools, ToolRow, tool_type, by created_at);
