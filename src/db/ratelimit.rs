//! Rate-limit leases: each API key's hourly budget, handed out to replicas in blocks.
//!
//! One row per key holds the fixed hourly window it is in (`window_start`, a Unix second) and
//! how many of the window's permits replicas have leased so far. A replica asks for the next
//! `want` permits in one upsert, which grants what is left of them under the key's limit
//! (possibly fewer, possibly none) and answers which positions it granted; the replica then
//! serves requests from the block in memory ([`crate::ratelimit`]). The statement is atomic on
//! both backends (SQLite serializes writers; PostgreSQL's `ON CONFLICT DO UPDATE` locks the
//! row), so the permits granted in a window never add up to more than the limit, however many
//! replicas ask.
//!
//! A window whose start moved on starts afresh; a replica whose clock lags does not reset a
//! newer window: its request counts into the newer one, whose start it is told. A request that
//! finds the window used up is counted in `denials`, so exactly one replica learns that it was
//! the first to be refused in the window (it records the security event).

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::{DbConnection, StoreError, StoreResult};

/// The permits one lease granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct Grant {
    /// The window the permits belong to (Unix second of its start).
    #[diesel(sql_type = BigInt)]
    pub window_start: i64,
    /// Permits leased in the window so far, these included.
    #[diesel(sql_type = BigInt)]
    pub leased: i64,
    /// How many this lease granted: the positions `leased - granted + 1 ..= leased` of the
    /// window; 0 when the window's budget is used up.
    #[diesel(sql_type = BigInt)]
    pub granted: i64,
    /// Leases refused in the window, this one included.
    #[diesel(sql_type = BigInt)]
    pub denials: i64,
}

impl Grant {
    /// The window position (1-based) of the first permit granted.
    pub fn first(&self) -> i64 {
        self.leased - self.granted + 1
    }
}

/// The lease upsert in the dialect of a backend: its parameter prefix (`?` or `$`) and its
/// two-argument minimum and maximum. Parameters: key, window start, wanted permits, limit.
fn lease_sql(p: char, min: &str, max: &str) -> String {
    let fresh = "excluded.window_start > c.window_start";
    let left = format!("{max}(0, {min}({p}3, {p}4 - c.leased))");
    format!(
        "INSERT INTO rate_limit_leases AS c (key_id, window_start, leased, granted, denials) \
         VALUES ({p}1, {p}2, {min}({p}3, {p}4), {min}({p}3, {p}4), 0) \
         ON CONFLICT (key_id) DO UPDATE SET \
         window_start = {max}(c.window_start, excluded.window_start), \
         leased = CASE WHEN {fresh} THEN excluded.leased ELSE c.leased + {left} END, \
         granted = CASE WHEN {fresh} THEN excluded.granted ELSE {left} END, \
         denials = CASE WHEN {fresh} THEN 0 \
           WHEN c.leased >= {p}4 THEN c.denials + 1 ELSE c.denials END \
         RETURNING window_start, leased, granted, denials"
    )
}

static SQLITE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| lease_sql('?', "min", "max"));
static POSTGRES: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| lease_sql('$', "LEAST", "GREATEST"));

/// Leases up to `want` (at least 1) of the next permits of `key_id` in the window starting at
/// `window_start` (Unix second), under a limit of `limit` permits per window.
pub fn lease(
    conn: &mut DbConnection, key_id: &str, window_start: i64, want: i64, limit: i64,
) -> StoreResult<Grant> {
    let sql: &str = match conn {
        DbConnection::Sqlite(_) => &SQLITE,
        DbConnection::Postgres(_) => &POSTGRES,
    };
    diesel::sql_query(sql)
        .bind::<Text, _>(key_id)
        .bind::<BigInt, _>(window_start)
        .bind::<BigInt, _>(want.max(1))
        .bind::<BigInt, _>(limit)
        .get_result(conn)
        .map_err(StoreError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Store;

    #[test]
    fn leases_never_grant_past_the_limit_and_a_new_window_starts_afresh() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("ratelimit_test"));
        let store = Store::open(&format!("sqlite://{}/t.db", dir.display()), 1).expect("store");
        let lease = |window, want, limit| {
            store
                .run_blocking(|conn| lease(conn, "key_1", window, want, limit))
                .expect("lease")
        };
        let first = lease(3600, 4, 10);
        assert_eq!(
            (first.window_start, first.first(), first.granted),
            (3600, 1, 4)
        );
        let second = lease(3600, 4, 10);
        assert_eq!((second.first(), second.granted, second.denials), (5, 4, 0));
        // Only what is left, then nothing; the first refusal is told it is the first.
        let partial = lease(3600, 4, 10);
        assert_eq!(
            (partial.first(), partial.granted, partial.leased),
            (9, 2, 10)
        );
        let refused = lease(3600, 4, 10);
        assert_eq!((refused.granted, refused.denials), (0, 1));
        assert_eq!(lease(3600, 1, 10).denials, 2);
        // A replica whose clock lags counts into the newer window.
        let next = lease(7200, 3, 10);
        assert_eq!(
            (next.window_start, next.first(), next.granted),
            (7200, 1, 3)
        );
        let lagging = lease(3600, 1, 10);
        assert_eq!((lagging.window_start, lagging.first()), (7200, 4));
        // A raised limit leases on; a limit lowered below what was leased grants nothing.
        assert_eq!(lease(7200, 2, 5).granted, 1);
        assert_eq!(lease(7200, 2, 3).granted, 0);
    }
}
