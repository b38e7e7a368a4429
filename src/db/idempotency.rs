//! Idempotency keys: which resource a keyed request created, and the hash of its body.

use diesel::prelude::*;

use super::schema::idempotency_keys;
use super::{DbConnection, StoreError, StoreResult};

/// How long a key is remembered.
pub const RETENTION_HOURS: i64 = 24;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = idempotency_keys)]
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
    conn: &mut DbConnection,
    org_id: &str,
    operation: &str,
    key: &str,
) -> StoreResult<Option<IdempotencyRow>> {
    let cutoff =
        crate::ids::format_time(chrono::Utc::now() - chrono::Duration::hours(RETENTION_HOURS));
    diesel::delete(
        idempotency_keys::table
            .filter(idempotency_keys::org_id.eq(org_id))
            .filter(idempotency_keys::created_at.lt(&cutoff)),
    )
    .execute(conn)?;
    idempotency_keys::table
        .filter(idempotency_keys::org_id.eq(org_id))
        .filter(idempotency_keys::operation.eq(operation))
        .filter(idempotency_keys::idempotency_key.eq(key))
        .select(IdempotencyRow::as_select())
        .first(conn)
        .optional()
        .map_err(StoreError::from)
}

pub fn insert(conn: &mut DbConnection, row: &IdempotencyRow) -> StoreResult<()> {
    diesel::insert_into(idempotency_keys::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}
