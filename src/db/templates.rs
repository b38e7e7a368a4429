//! Prompt template rows.

use diesel::prelude::*;

use super::schema::prompt_templates as t;
use super::{DbConnection, Found, StoreError, StoreResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = t)]
pub struct TemplateRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub description: Option<String>,
    pub template_type: String,
    pub template: String,
    /// JSON array of variable names.
    pub variables: String,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns a replace writes.
#[derive(Debug, Clone, AsChangeset)]
#[diesel(table_name = t, treat_none_as_null = true)]
pub struct TemplateChanges {
    pub name: String,
    pub description: Option<String>,
    pub template_type: String,
    pub template: String,
    pub variables: String,
}

/// What a list asks for.
#[derive(Debug, Clone)]
pub struct TemplateQuery {
    pub template_type: Option<String>,
    pub search: Option<String>,
    pub offset: i64,
    pub limit: i64,
    pub after_id: Option<String>,
}

pub fn insert(conn: &mut DbConnection, row: &TemplateRow) -> StoreResult<()> {
    diesel::insert_into(t::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<TemplateRow> {
    t::table
        .filter(t::org_id.eq(org_id))
        .filter(t::id.eq(id))
        .select(TemplateRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

fn filtered<'a>(org_id: &'a str, q: &'a TemplateQuery) -> t::BoxedQuery<'a, super::MultiBackend> {
    let mut query = t::table.filter(t::org_id.eq(org_id)).into_boxed();
    if let Some(ty) = &q.template_type {
        query = query.filter(t::template_type.eq(ty));
    }
    if let Some(s) = &q.search {
        let pattern = super::sql::like_pattern(s);
        query = query.filter(
            super::sql::lower(t::name)
                .like(pattern.clone())
                .escape('\\')
                .or(super::sql::lower_nullable(t::description)
                    .like(pattern)
                    .escape('\\')),
        );
    }
    query
}

/// A page, newest first, and the number of matching templates.
pub fn list(
    conn: &mut DbConnection,
    org_id: &str,
    q: &TemplateQuery,
) -> StoreResult<(Vec<TemplateRow>, i64)> {
    let total: i64 = filtered(org_id, q).count().get_result(conn)?;
    let after = match &q.after_id {
        Some(id) => get(conn, org_id, id).found()?.map(|row| row.id),
        None => None,
    };
    let mut query = filtered(org_id, q).order(t::id.desc()).limit(q.limit);
    match &after {
        Some(id) => query = query.filter(t::id.lt(id.clone())),
        None if q.offset > 0 => query = query.offset(q.offset),
        None => {}
    }
    let rows = query.select(TemplateRow::as_select()).load(conn)?;
    Ok((rows, total))
}

/// Replaces the template's columns when `check` accepts the current row.
pub fn update(
    conn: &mut DbConnection,
    org_id: &str,
    id: &str,
    check: impl FnOnce(&TemplateRow) -> StoreResult<()>,
    changes: &TemplateChanges,
) -> StoreResult<TemplateRow> {
    super::write_transaction(conn, |conn| {
        super::lock_row(conn, "prompt_templates", org_id, id)?;
        let current = get(conn, org_id, id)?;
        check(&current)?;
        diesel::update(t::table.filter(t::org_id.eq(org_id)).filter(t::id.eq(id)))
            .set((
                changes,
                t::version.eq(current.version + 1),
                t::updated_at.eq(crate::ids::now()),
            ))
            .execute(conn)?;
        get(conn, org_id, id)
    })
}

pub fn delete(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<()> {
    let n =
        diesel::delete(t::table.filter(t::org_id.eq(org_id)).filter(t::id.eq(id))).execute(conn)?;
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}
