//! Vault rows. A credential's value is sealed ([`crate::crypto`]) in `value_sealed`, which only
//! the decrypted read opens; vault tokens are stored as SHA-256 hashes, like API keys.

use diesel::prelude::*;

use super::crud::Stored;
use super::schema::{vault_credentials as vc, vault_tokens as vt};
use super::sql::{FilterIf, Page};
use super::{DbConnection, StoreError, StoreResult};

/// One row of `vault_credentials`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = vc)]
pub struct CredentialRow {
    pub id: String,
    pub org_id: String,
    /// The columns an update writes.
    #[diesel(embed)]
    pub content: CredentialChanges,
    pub last_accessed_at: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns a replace writes.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = vc, treat_none_as_null = true)]
pub struct CredentialChanges {
    pub name: String,
    pub cred_type: String,
    pub environment: Option<String>,
    pub description: Option<String>,
    /// JSON: metadata and tags.
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

super::crud::resource_table!(
    vault_credentials, CredentialRow, versioned CredentialChanges, last_accessed_at = None
);
super::crud::stored_table!(vault_tokens, TokenRow);

/// `s` with `LIKE`'s wildcards escaped (`\`), its case kept (unlike [`super::sql::like_pattern`]).
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
pub fn list(
    conn: &mut DbConnection, org_id: &str, f: &CredentialFilter, page: &Page,
) -> StoreResult<(Vec<CredentialRow>, i64)> {
    let tagged = |tag: &String| {
        let pattern = format!("%\"tags\":[%\"{}\"%", escape_like(tag));
        vc::body.like(pattern).escape('\\')
    };
    let filtered = || {
        vc::table
            .filter(vc::org_id.eq(org_id))
            .into_boxed()
            .filter_if(f.cred_type.as_ref().map(|t| vc::cred_type.eq(t)))
            .filter_if(f.environment.as_ref().map(|e| vc::environment.eq(e)))
            .filter_if(f.tag.as_ref().map(tagged))
    };
    super::crud::newest_first!(conn, vc, CredentialRow, filtered, page)
}

/// Records a decrypted read of a credential.
pub fn touch_credential(conn: &mut DbConnection, id: &str, at: &str) -> StoreResult<()> {
    diesel::update(vc::table.filter(vc::id.eq(id)))
        .set(vc::last_accessed_at.eq(at))
        .execute(conn)?;
    Ok(())
}

// Tokens.

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
    conn: &mut DbConnection, org_id: &str, page: &Page,
) -> StoreResult<(Vec<TokenRow>, i64)> {
    let filtered = || vt::table.filter(vt::org_id.eq(org_id)).into_boxed();
    super::crud::newest_first!(conn, vt, TokenRow, filtered, page)
}

/// Revokes a token (keeping the first revocation time) and returns it.
pub fn revoke_token(
    conn: &mut DbConnection, org_id: &str, id: &str, at: &str,
) -> StoreResult<TokenRow> {
    diesel::update(
        vt::table
            .filter(vt::org_id.eq(org_id))
            .filter(vt::id.eq(id))
            .filter(vt::revoked_at.is_null()),
    )
    .set(vt::revoked_at.eq(at))
    .execute(conn)?;
    TokenRow::get(conn, org_id, id)
}

/// Records a token's use.
pub fn touch_token(conn: &mut DbConnection, id: &str, at: &str) -> StoreResult<()> {
    diesel::update(vt::table.filter(vt::id.eq(id)))
        .set(vt::last_used_at.eq(at))
        .execute(conn)?;
    Ok(())
}
