//! Model registry rows. The provider API key is stored sealed ([`crate::crypto`]) in a column
//! of its own that no read path returns.

use diesel::prelude::*;

use super::schema::models as m;
use super::sql::Page;
use super::{DbConnection, Found, StoreError, StoreResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = m)]
pub struct ModelRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub provider: String,
    pub model_name: String,
    pub endpoint: Option<String>,
    pub api_key_encrypted: Option<String>,
    /// JSON: description, pricing, context_window, max_output_tokens.
    pub body: String,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns a replace writes.
#[derive(Debug, Clone, AsChangeset)]
#[diesel(table_name = m, treat_none_as_null = true)]
pub struct ModelChanges {
    pub name: String,
    pub provider: String,
    pub model_name: String,
    pub endpoint: Option<String>,
    pub api_key_encrypted: Option<String>,
    pub body: String,
}

pub fn insert(conn: &mut DbConnection, row: &ModelRow) -> StoreResult<()> {
    diesel::insert_into(m::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<ModelRow> {
    m::table
        .filter(m::org_id.eq(org_id))
        .filter(m::id.eq(id))
        .select(ModelRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

fn filtered<'a>(
    org_id: &'a str,
    provider: Option<&'a str>,
) -> m::BoxedQuery<'a, super::MultiBackend> {
    let mut q = m::table.filter(m::org_id.eq(org_id)).into_boxed();
    if let Some(p) = provider {
        q = q.filter(m::provider.eq(p));
    }
    q
}

/// A page, newest first, and the number of matching rows. A cursor whose id is not a stored
/// model (the built-in one, or a deleted one) pages by its offset.
pub fn list(
    conn: &mut DbConnection,
    org_id: &str,
    provider: Option<&str>,
    page: &Page,
) -> StoreResult<(Vec<ModelRow>, i64)> {
    let total: i64 = filtered(org_id, provider).count().get_result(conn)?;
    let after = match &page.after_id {
        Some(id) => get(conn, org_id, id).found()?.map(|row| row.id),
        None => None,
    };
    let mut q = filtered(org_id, provider)
        .order(m::id.desc())
        .limit(page.limit);
    match after {
        Some(id) => q = q.filter(m::id.lt(id)),
        None if page.offset > 0 => q = q.offset(page.offset),
        None => {}
    }
    let rows = q.select(ModelRow::as_select()).load(conn)?;
    Ok((rows, total))
}

/// Replaces the model's columns; `change` sees the current row (for `If-Match` and to keep
/// the stored key).
pub fn update(
    conn: &mut DbConnection,
    org_id: &str,
    id: &str,
    change: impl FnOnce(&ModelRow) -> StoreResult<ModelChanges>,
) -> StoreResult<ModelRow> {
    super::write_transaction(conn, |conn| {
        super::lock_row(conn, "models", org_id, id)?;
        let current = get(conn, org_id, id)?;
        let changes = change(&current)?;
        diesel::update(m::table.filter(m::org_id.eq(org_id)).filter(m::id.eq(id)))
            .set((
                &changes,
                m::version.eq(current.version + 1),
                m::updated_at.eq(crate::ids::now()),
            ))
            .execute(conn)?;
        get(conn, org_id, id)
    })
}

pub fn delete(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<()> {
    let n =
        diesel::delete(m::table.filter(m::org_id.eq(org_id)).filter(m::id.eq(id))).execute(conn)?;
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}
