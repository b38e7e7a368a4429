//! Vault rows. A credential's value is sealed ([`crate::crypto`]) in `value_sealed`, which only
//! the decrypted read opens; vault tokens are stored as SHA-256 hashes, like API keys.

use diesel::prelude::*;

use super::schema::{vault_credentials as vc, vault_tokens as vt};
use super::{DbConnection, StoreError, StoreResult};

/// One row of `vault_credentials`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = vc)]
pub struct CredentialRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub cred_type: String,
    pub environment: Option<String>,
    pub description: Option<String>,
    /// JSON: metadata and tags.
    pub body: String,
    pub value_sealed: String,
    pub last_accessed_at: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns a replace writes.
#[derive(Debug, Clone, AsChangeset)]
#[diesel(table_name = vc, treat_none_as_null = true)]
pub struct CredentialChanges {
    pub name: String,
    pub cred_type: String,
    pub environment: Option<String>,
    pub description: Option<String>,
    pub body: String,
    pub value_sealed: String,
}

/// One row of `vault_tokens`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = vt)]
pub struct TokenRow {
    pub id: String,
    pub org_id: String,
    pub user_id: String,
    pub name: String,
    pub prefix: String,
    pub token_hash: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// What narrows a credential list.
#[derive(Debug, Clone, Default)]
pub struct CredentialFilter {
    pub cred_type: Option<String>,
    pub environment: Option<String>,
    /// A tag, matched inside the JSON body as `"<tag>"` (tags cannot hold quotes).
    pub tag: Option<String>,
}

pub fn insert_credential(conn: &mut DbConnection, row: &CredentialRow) -> StoreResult<()> {
    diesel::insert_into(vc::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get_credential(
    conn: &mut DbConnection,
    org_id: &str,
    id: &str,
) -> StoreResult<CredentialRow> {
    vc::table
        .filter(vc::org_id.eq(org_id))
        .filter(vc::id.eq(id))
        .select(CredentialRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

fn filtered<'a>(
    org_id: &'a str,
    f: &'a CredentialFilter,
) -> vc::BoxedQuery<'a, super::MultiBackend> {
    let mut q = vc::table.filter(vc::org_id.eq(org_id)).into_boxed();
    if let Some(t) = &f.cred_type {
        q = q.filter(vc::cred_type.eq(t));
    }
    if let Some(e) = &f.environment {
        q = q.filter(vc::environment.eq(e));
    }
    if let Some(tag) = &f.tag {
        q = q.filter(
            vc::body
                .like(format!("%\"tags\":[%\"{}\"%", escape_like(tag)))
                .escape('\\'),
        );
    }
    q
}

fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A page of credentials, newest first, and the number matching.
pub fn list_credentials(
    conn: &mut DbConnection,
    org_id: &str,
    filter: &CredentialFilter,
    page: &super::sql::Page,
) -> StoreResult<(Vec<CredentialRow>, i64)> {
    let total: i64 = filtered(org_id, filter).count().get_result(conn)?;
    let mut q = filtered(org_id, filter)
        .order(vc::id.desc())
        .limit(page.limit);
    match &page.after_id {
        Some(id) => q = q.filter(vc::id.lt(id.clone())),
        None if page.offset > 0 => q = q.offset(page.offset),
        None => {}
    }
    let rows = q.select(CredentialRow::as_select()).load(conn)?;
    Ok((rows, total))
}

/// Replaces a credential under a row lock; `change` sees the current row (for `If-Match` and
/// to keep the sealed value).
pub fn update_credential(
    conn: &mut DbConnection,
    org_id: &str,
    id: &str,
    change: impl FnOnce(&CredentialRow) -> StoreResult<CredentialChanges>,
) -> StoreResult<CredentialRow> {
    super::write_transaction(conn, |conn| {
        super::lock_row(conn, "vault_credentials", org_id, id)?;
        let current = get_credential(conn, org_id, id)?;
        let changes = change(&current)?;
        diesel::update(
            vc::table
                .filter(vc::org_id.eq(org_id))
                .filter(vc::id.eq(id)),
        )
        .set((
            &changes,
            vc::version.eq(current.version + 1),
            vc::updated_at.eq(crate::ids::now()),
        ))
        .execute(conn)?;
        get_credential(conn, org_id, id)
    })
}

/// Records a decrypted read of a credential.
pub fn touch_credential(conn: &mut DbConnection, id: &str, at: &str) -> StoreResult<()> {
    diesel::update(vc::table.filter(vc::id.eq(id)))
        .set(vc::last_accessed_at.eq(at))
        .execute(conn)?;
    Ok(())
}

pub fn delete_credential(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<()> {
    let n = diesel::delete(
        vc::table
            .filter(vc::org_id.eq(org_id))
            .filter(vc::id.eq(id)),
    )
    .execute(conn)?;
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

// Tokens.

pub fn insert_token(conn: &mut DbConnection, row: &TokenRow) -> StoreResult<()> {
    diesel::insert_into(vt::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get_token(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<TokenRow> {
    vt::table
        .filter(vt::org_id.eq(org_id))
        .filter(vt::id.eq(id))
        .select(TokenRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

/// The token with this hash, in any organization.
pub fn token_by_hash(conn: &mut DbConnection, hash: &str) -> StoreResult<Option<TokenRow>> {
    vt::table
        .filter(vt::token_hash.eq(hash))
        .select(TokenRow::as_select())
        .first(conn)
        .optional()
        .map_err(StoreError::from)
}

/// A page of tokens, newest first, and the number of tokens.
pub fn list_tokens(
    conn: &mut DbConnection,
    org_id: &str,
    page: &super::sql::Page,
) -> StoreResult<(Vec<TokenRow>, i64)> {
    let total: i64 = vt::table
        .filter(vt::org_id.eq(org_id))
        .count()
        .get_result(conn)?;
    let mut q = vt::table
        .filter(vt::org_id.eq(org_id))
        .into_boxed()
        .order(vt::id.desc())
        .limit(page.limit);
    match &page.after_id {
        Some(id) => q = q.filter(vt::id.lt(id.clone())),
        None if page.offset > 0 => q = q.offset(page.offset),
        None => {}
    }
    let rows = q.select(TokenRow::as_select()).load(conn)?;
    Ok((rows, total))
}

/// Revokes a token (keeping the first revocation time) and returns it.
pub fn revoke_token(
    conn: &mut DbConnection,
    org_id: &str,
    id: &str,
    at: &str,
) -> StoreResult<TokenRow> {
    diesel::update(
        vt::table
            .filter(vt::org_id.eq(org_id))
            .filter(vt::id.eq(id))
            .filter(vt::revoked_at.is_null()),
    )
    .set(vt::revoked_at.eq(at))
    .execute(conn)?;
    get_token(conn, org_id, id)
}

/// Records a token's use.
pub fn touch_token(conn: &mut DbConnection, id: &str, at: &str) -> StoreResult<()> {
    diesel::update(vt::table.filter(vt::id.eq(id)))
        .set(vt::last_used_at.eq(at))
        .execute(conn)?;
    Ok(())
}
