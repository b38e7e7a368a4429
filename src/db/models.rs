//! Model registry rows. The provider API key is stored sealed ([`crate::crypto`]) in a column
//! of its own that no read path returns.

use diesel::prelude::*;

use super::schema::models as m;
use super::sql::{FilterIf, Page};
use super::{DbConnection, StoreResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = m)]
pub struct ModelRow {
    pub id: String,
    pub org_id: String,
    /// The columns an update writes.
    #[diesel(embed)]
    pub content: ModelChanges,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns a replace writes.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = m, treat_none_as_null = true)]
pub struct ModelChanges {
    pub name: String,
    pub provider: String,
    pub model_name: String,
    pub endpoint: Option<String>,
    pub api_key_encrypted: Option<String>,
    /// JSON: description, pricing, context_window, max_output_tokens.
    pub body: String,
}

super::crud::resource_table!(models, ModelRow, versioned ModelChanges);

/// A page, newest first, and the number of matching rows. A cursor whose id is not a stored
/// model (the built-in one, or a deleted one) pages by its offset.
pub fn list(
    conn: &mut DbConnection, org_id: &str, provider: Option<&str>, page: &Page,
) -> StoreResult<(Vec<ModelRow>, i64)> {
    let page = super::crud::stored_cursor::<ModelRow>(conn, org_id, page)?;
    let filtered = || {
        let q = m::table.filter(m::org_id.eq(org_id)).into_boxed();
        q.filter_if(provider.map(|p| m::provider.eq(p)))
    };
    super::crud::newest_first!(conn, m, ModelRow, filtered, &page)
}
