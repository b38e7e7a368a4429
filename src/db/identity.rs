//! Organizations, users and API keys.

use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::schema::{api_keys as k, organizations as o, users as u};
use super::sql::Page;
use super::types::Json;
use super::{DbConnection, MultiBackend, StoreResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = o)]
pub struct OrganizationRow {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

/// The channels a user is notified on; a channel never set takes its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    #[serde(default = "yes")]
    pub email: bool,
    #[serde(default)]
    pub slack: bool,
}

fn yes() -> bool {
    true
}

/// Notification preferences of a user who never changed them: email, not Slack.
impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            email: true,
            slack: false,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = u)]
pub struct UserRow {
    pub id: String,
    pub org_id: String,
    pub username: String,
    pub email: String,
    pub role: String,
    pub created_at: String,
    /// Notification preferences (`{"email": bool, "slack": bool}`).
    pub preferences: Json<Preferences>,
    pub updated_at: String,
}

super::crud::stored_table!(users, UserRow);

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
            preferences: Json(Preferences::default()),
            updated_at: now,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = k)]
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

super::crud::identified!(ApiKeyRow);

pub fn count_organizations(conn: &mut DbConnection) -> StoreResult<i64> {
    Ok(o::table.count().get_result(conn)?)
}

pub fn organization(conn: &mut DbConnection, id: &str) -> StoreResult<OrganizationRow> {
    Ok(o::table
        .find(id)
        .select(OrganizationRow::as_select())
        .first(conn)?)
}

pub fn organization_by_name(
    conn: &mut DbConnection, name: &str,
) -> StoreResult<Option<OrganizationRow>> {
    let named = o::table.filter(o::name.eq(name));
    Ok(named
        .select(OrganizationRow::as_select())
        .first(conn)
        .optional()?)
}

super::crud::inserts!(insert_organization, o, OrganizationRow);

/// The organization's user `id`.
pub fn user(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<UserRow> {
    <UserRow as super::crud::Stored>::get(conn, org_id, id)
}

pub fn user_by_name(
    conn: &mut DbConnection, org_id: &str, username: &str,
) -> StoreResult<Option<UserRow>> {
    let named = u::table
        .filter(u::org_id.eq(org_id))
        .filter(u::username.eq(username));
    Ok(named.select(UserRow::as_select()).first(conn).optional()?)
}

pub fn insert_user(conn: &mut DbConnection, row: &UserRow) -> StoreResult<()> {
    <UserRow as super::crud::Stored>::insert(conn, row)
}

/// Changes the organization's user `id`'s email and preferences; returns the updated row.
pub fn update_profile(
    conn: &mut DbConnection, org_id: &str, id: &str, email: &str, preferences: Preferences,
) -> StoreResult<UserRow> {
    let user = u::table.filter(u::org_id.eq(org_id)).filter(u::id.eq(id));
    let changed = diesel::update(user)
        .set((
            u::email.eq(email),
            u::preferences.eq(Json(preferences)),
            u::updated_at.eq(crate::ids::now()),
        ))
        .execute(conn)?;
    super::crud::deleted(changed)?;
    self::user(conn, org_id, id)
}

super::crud::inserts!(insert_key, k, ApiKeyRow);

/// The key with this hash and its user, whatever its state (the caller checks revocation and expiry).
pub fn key_by_hash(
    conn: &mut DbConnection, hash: &str,
) -> StoreResult<Option<(ApiKeyRow, UserRow)>> {
    let found = k::table.inner_join(u::table).filter(k::key_hash.eq(hash));
    let row = found.select((ApiKeyRow::as_select(), UserRow::as_select()));
    Ok(row.first(conn).optional()?)
}

pub fn touch_key(conn: &mut DbConnection, id: &str, at: &str) -> StoreResult<()> {
    diesel::update(k::table.find(id))
        .set(k::last_used_at.eq(at))
        .execute(conn)?;
    Ok(())
}

/// The live (not revoked) keys of an organization, of one user when `user_id` is given.
fn live_keys<'a>(org_id: &'a str, user_id: Option<&'a str>) -> k::BoxedQuery<'a, MultiBackend> {
    let live = k::table
        .filter(k::org_id.eq(org_id))
        .filter(k::revoked_at.is_null());
    match user_id {
        Some(user) => live.filter(k::user_id.eq(user)).into_boxed(),
        None => live.into_boxed(),
    }
}

/// A page of the live keys of an organization (of one user when `user_id` is given), newest
/// first, and how many there are.
pub fn list_keys(
    conn: &mut DbConnection, org_id: &str, user_id: Option<&str>, page: &Page,
) -> StoreResult<(Vec<ApiKeyRow>, i64)> {
    let filtered = || live_keys(org_id, user_id);
    super::crud::newest_first!(conn, k, ApiKeyRow, filtered, page, by created_at)
}

/// A live key of the organization (of one user when `user_id` is given).
pub fn get_key(
    conn: &mut DbConnection, org_id: &str, user_id: Option<&str>, id: &str,
) -> StoreResult<ApiKeyRow> {
    let key = live_keys(org_id, user_id).filter(k::id.eq(id));
    Ok(key.select(ApiKeyRow::as_select()).first(conn)?)
}

/// Revokes a live key of the organization (of one user when `user_id` is given); returns it
/// as it was.
pub fn revoke_key(
    conn: &mut DbConnection, org_id: &str, user_id: Option<&str>, id: &str, at: &str,
) -> StoreResult<ApiKeyRow> {
    let row = get_key(conn, org_id, user_id, id)?;
    let live = k::table.find(id).filter(k::revoked_at.is_null());
    let revoked = diesel::update(live)
        .set(k::revoked_at.eq(at))
        .execute(conn)?;
    super::crud::deleted(revoked)?;
    Ok(row)
}

/// What an update changes of a key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = k)]
pub struct ApiKeyChange {
    pub name: Option<String>,
    pub rate_limit_per_hour: Option<Option<i64>>,
    pub rate_limit_burst: Option<Option<i64>>,
}

/// Updates a live key of the organization (of one user when `user_id` is given).
pub fn update_key(
    conn: &mut DbConnection, org_id: &str, user_id: Option<&str>, id: &str, change: &ApiKeyChange,
) -> StoreResult<ApiKeyRow> {
    let current = get_key(conn, org_id, user_id, id)?;
    if change.name.is_some()
        || change.rate_limit_per_hour.is_some()
        || change.rate_limit_burst.is_some()
    {
        diesel::update(k::table.find(&current.id))
            .set(change)
            .execute(conn)?;
    }
    get_key(conn, org_id, user_id, id)
}
