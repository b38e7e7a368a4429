//! Prompt template rows.

use diesel::prelude::*;

use super::schema::prompt_templates as t;
use super::sql::{FilterIf, Page};
use super::{DbConnection, StoreResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = t)]
pub struct TemplateRow {
    pub id: String,
    pub org_id: String,
    /// The columns an update writes.
    #[diesel(embed)]
    pub content: TemplateChanges,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns a replace writes.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, treat_none_as_null = true)]
pub struct TemplateChanges {
    pub name: String,
    pub description: Option<String>,
    pub template_type: String,
    pub template: String,
    /// JSON array of variable names.
    pub variables: String,
}

/// What narrows a list.
#[derive(Debug, Clone, Default)]
pub struct TemplateFilter {
    pub template_type: Option<String>,
    pub search: Option<String>,
}

super::crud::resource_table!(prompt_templates, TemplateRow, versioned TemplateChanges);

/// A page, newest first, and the number of matching templates. A cursor whose id is not a
/// stored template (a deleted one) pages by its offset.
pub fn list(
    conn: &mut DbConnection, org_id: &str, f: &TemplateFilter, page: &Page,
) -> StoreResult<(Vec<TemplateRow>, i64)> {
    let page = super::crud::stored_cursor::<TemplateRow>(conn, org_id, page)?;
    let filtered = || {
        let mut q = t::table.filter(t::org_id.eq(org_id)).into_boxed();
        q = q.filter_if(f.template_type.as_ref().map(|ty| t::template_type.eq(ty)));
        if let Some(s) = &f.search {
            let pattern = super::sql::like_pattern(s);
            q = q.filter(
                super::sql::folded(t::name)
                    .like(pattern.clone())
                    .escape('\\')
                    .or(super::sql::folded(t::description)
                        .like(pattern)
                        .escape('\\')),
            );
        }
        q
    };
    super::crud::newest_first!(conn, t, TemplateRow, filtered, &page)
}
