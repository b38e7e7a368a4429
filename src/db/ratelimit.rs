//! Rate-limit counters: fixed windows per API key, counted in the database so that every
//! replica sharing it enforces the same limits.
//!
//! One row per key holds two windows: the hourly window (`window_*`) and the one-second burst
//! window (`burst_*`). A request is one upsert that starts a window afresh when its start moved
//! on and increments it otherwise, and returns both counts: one statement, atomic on both
//! backends (SQLite serializes writers; PostgreSQL's `ON CONFLICT DO UPDATE` locks the row).
//! A replica whose clock lags does not reset a newer window: an older start counts into it.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::{DbConnection, StoreError, StoreResult};

/// The counts after this request, in its windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct Counts {
    #[diesel(sql_type = BigInt)]
    pub window_start: i64,
    #[diesel(sql_type = BigInt)]
    pub window_count: i64,
    #[diesel(sql_type = BigInt)]
    pub burst_start: i64,
    #[diesel(sql_type = BigInt)]
    pub burst_count: i64,
}

/// The upsert, in the dialect of a backend: its placeholders and its two-argument maximum.
fn upsert(placeholders: [&str; 3], max: &str) -> String {
    let [key, window, burst] = placeholders;
    format!(
        "INSERT INTO rate_limit_counters AS c \
         (key_id, window_start, window_count, burst_start, burst_count) \
         VALUES ({key}, {window}, 1, {burst}, 1) \
         ON CONFLICT (key_id) DO UPDATE SET \
         window_count = CASE WHEN excluded.window_start <= c.window_start \
           THEN c.window_count + 1 ELSE 1 END, \
         window_start = {max}(c.window_start, excluded.window_start), \
         burst_count = CASE WHEN excluded.burst_start <= c.burst_start \
           THEN c.burst_count + 1 ELSE 1 END, \
         burst_start = {max}(c.burst_start, excluded.burst_start) \
         RETURNING window_start, window_count, burst_start, burst_count"
    )
}

static SQLITE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| upsert(["?", "?", "?"], "max"));
static POSTGRES: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| upsert(["$1", "$2", "$3"], "GREATEST"));

/// Counts one request of `key_id` in the windows starting at `window_start` and
/// `burst_start` (Unix seconds), and returns the counts including it.
pub fn hit(
    conn: &mut DbConnection,
    key_id: &str,
    window_start: i64,
    burst_start: i64,
) -> StoreResult<Counts> {
    let sql: &str = match conn {
        DbConnection::Sqlite(_) => &SQLITE,
        DbConnection::Postgres(_) => &POSTGRES,
    };
    diesel::sql_query(sql)
        .bind::<Text, _>(key_id)
        .bind::<BigInt, _>(window_start)
        .bind::<BigInt, _>(burst_start)
        .get_result(conn)
        .map_err(StoreError::from)
}
