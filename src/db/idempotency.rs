//! Idempotency keys: which resource a keyed request created, and the hash of its body.

use diesel::prelude::*;

use super::schema::idempotency_keys as i;
use super::{DbConnection, StoreResult};

/// How long a key is remembered.
pub const RETENTION_HOURS: i64 = 24;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = i)]
pub struct IdempotencyRow {
    pub org_id: String,
    pub operation: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub resource_id: String,
    pub created_at: String,
}

/// The live record of a key, forgetting it when it is older than the retention.
pub fn find(
    conn: &mut DbConnection, org_id: &str, operation: &str, key: &str,
) -> StoreResult<Option<IdempotencyRow>> {
    let cutoff =
        crate::ids::format_time(chrono::Utc::now() - chrono::Duration::hours(RETENTION_HOURS));
    let org = i::table.filter(i::org_id.eq(org_id));
    diesel::delete(org.filter(i::created_at.lt(&cutoff))).execute(conn)?;
    let kept = org
        .filter(i::operation.eq(operation))
        .filter(i::idempotency_key.eq(key));
    Ok(kept
        .select(IdempotencyRow::as_select())
        .first(conn)
        .optional()?)
}

super::crud::inserts!(
    /// Remembers which resource a keyed request created.
    insert,
    i,
    IdempotencyRow
);
