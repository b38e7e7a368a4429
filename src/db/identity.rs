//! Organizations, users and API keys.

use diesel::prelude::*;

use super::schema::{api_keys, organizations, users};
use super::{DbConnection, StoreError, StoreResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = organizations)]
pub struct OrganizationRow {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub id: String,
    pub org_id: String,
    pub username: String,
    pub email: String,
    pub role: String,
    pub created_at: String,
    /// Notification preferences, a JSON document (`{"email": bool, "slack": bool}`).
    pub preferences: String,
    pub updated_at: String,
}

/// Notification preferences of a user who never changed them.
pub const DEFAULT_PREFERENCES: &str = r#"{"email":true,"slack":false}"#;

impl UserRow {
    /// A new user of `org_id`, created now with the default preferences.
    pub fn new(org_id: String, username: String, email: String, role: &str) -> Self {
        let now = crate::ids::now();
        Self {
            id: crate::ids::new_id("user"),
            org_id,
            username,
            email,
            role: role.to_string(),
            created_at: now.clone(),
            preferences: DEFAULT_PREFERENCES.to_string(),
            updated_at: now,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
pub struct ApiKeyRow {
    pub id: String,
    pub org_id: String,
    pub user_id: String,
    pub name: String,
    pub prefix: String,
    pub key_hash: String,
    /// JSON array of scope names.
    pub scopes: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    /// The key's own window limit (requests per hour); `None` takes the server's default.
    pub rate_limit_per_hour: Option<i64>,
    /// The key's own burst limit (requests per second); `None` takes the server's default.
    pub rate_limit_burst: Option<i64>,
}

pub fn count_organizations(conn: &mut DbConnection) -> StoreResult<i64> {
    organizations::table
        .count()
        .get_result(conn)
        .map_err(StoreError::from)
}

pub fn organization(conn: &mut DbConnection, id: &str) -> StoreResult<OrganizationRow> {
    organizations::table
        .find(id)
        .select(OrganizationRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

pub fn organization_by_name(
    conn: &mut DbConnection,
    name: &str,
) -> StoreResult<Option<OrganizationRow>> {
    organizations::table
        .filter(organizations::name.eq(name))
        .select(OrganizationRow::as_select())
        .first(conn)
        .optional()
        .map_err(StoreError::from)
}

pub fn insert_organization(conn: &mut DbConnection, row: &OrganizationRow) -> StoreResult<()> {
    diesel::insert_into(organizations::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn user(conn: &mut DbConnection, id: &str) -> StoreResult<UserRow> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

pub fn user_by_name(
    conn: &mut DbConnection,
    org_id: &str,
    username: &str,
) -> StoreResult<Option<UserRow>> {
    users::table
        .filter(users::org_id.eq(org_id))
        .filter(users::username.eq(username))
        .select(UserRow::as_select())
        .first(conn)
        .optional()
        .map_err(StoreError::from)
}

pub fn insert_user(conn: &mut DbConnection, row: &UserRow) -> StoreResult<()> {
    diesel::insert_into(users::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// Changes a user's email and preferences; returns the updated row.
pub fn update_profile(
    conn: &mut DbConnection,
    id: &str,
    email: &str,
    preferences: &str,
    updated_at: &str,
) -> StoreResult<UserRow> {
    diesel::update(users::table.find(id))
        .set((
            users::email.eq(email),
            users::preferences.eq(preferences),
            users::updated_at.eq(updated_at),
        ))
        .execute(conn)?;
    user(conn, id)
}

pub fn insert_key(conn: &mut DbConnection, row: &ApiKeyRow) -> StoreResult<()> {
    diesel::insert_into(api_keys::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// The key with this hash and its user, whatever its state (the caller checks revocation and expiry).
pub fn key_by_hash(
    conn: &mut DbConnection,
    hash: &str,
) -> StoreResult<Option<(ApiKeyRow, UserRow)>> {
    api_keys::table
        .inner_join(users::table)
        .filter(api_keys::key_hash.eq(hash))
        .select((ApiKeyRow::as_select(), UserRow::as_select()))
        .first(conn)
        .optional()
        .map_err(StoreError::from)
}

pub fn touch_key(conn: &mut DbConnection, id: &str, at: &str) -> StoreResult<()> {
    diesel::update(api_keys::table.find(id))
        .set(api_keys::last_used_at.eq(at))
        .execute(conn)?;
    Ok(())
}

/// Live (not revoked) keys of an organization, optionally of one user, newest first.
pub fn list_keys(
    conn: &mut DbConnection,
    org_id: &str,
    user_id: Option<&str>,
    offset: i64,
    limit: i64,
) -> StoreResult<(Vec<ApiKeyRow>, i64)> {
    let base = || {
        let mut q = api_keys::table
            .filter(api_keys::org_id.eq(org_id.to_string()))
            .filter(api_keys::revoked_at.is_null())
            .into_boxed();
        if let Some(u) = user_id {
            q = q.filter(api_keys::user_id.eq(u.to_string()));
        }
        q
    };
    let total: i64 = base().count().get_result(conn)?;
    let rows = base()
        .order((api_keys::created_at.desc(), api_keys::id.desc()))
        .offset(offset)
        .limit(limit)
        .select(ApiKeyRow::as_select())
        .load(conn)?;
    Ok((rows, total))
}

/// Revokes a live key of the organization (of one user when `user_id` is given).
pub fn revoke_key(
    conn: &mut DbConnection,
    org_id: &str,
    user_id: Option<&str>,
    id: &str,
    at: &str,
) -> StoreResult<()> {
    let mut q = diesel::update(api_keys::table)
        .filter(api_keys::org_id.eq(org_id))
        .filter(api_keys::id.eq(id))
        .filter(api_keys::revoked_at.is_null())
        .into_boxed();
    if let Some(u) = user_id {
        q = q.filter(api_keys::user_id.eq(u));
    }
    let n = q.set(api_keys::revoked_at.eq(at)).execute(conn)?;
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

/// A live key of the organization (of one user when `user_id` is given).
pub fn get_key(
    conn: &mut DbConnection,
    org_id: &str,
    user_id: Option<&str>,
    id: &str,
) -> StoreResult<ApiKeyRow> {
    let mut q = api_keys::table
        .filter(api_keys::org_id.eq(org_id))
        .filter(api_keys::id.eq(id))
        .filter(api_keys::revoked_at.is_null())
        .into_boxed();
    if let Some(u) = user_id {
        q = q.filter(api_keys::user_id.eq(u));
    }
    q.select(ApiKeyRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

/// What an update changes of a key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = api_keys)]
pub struct ApiKeyChange {
    pub name: Option<String>,
    pub rate_limit_per_hour: Option<Option<i64>>,
    pub rate_limit_burst: Option<Option<i64>>,
}

/// Updates a live key of the organization (of one user when `user_id` is given).
pub fn update_key(
    conn: &mut DbConnection,
    org_id: &str,
    user_id: Option<&str>,
    id: &str,
    change: &ApiKeyChange,
) -> StoreResult<ApiKeyRow> {
    let current = get_key(conn, org_id, user_id, id)?;
    if change.name.is_some()
        || change.rate_limit_per_hour.is_some()
        || change.rate_limit_burst.is_some()
    {
        diesel::update(api_keys::table.find(&current.id))
            .set(change)
            .execute(conn)?;
    }
    get_key(conn, org_id, user_id, id)
}
