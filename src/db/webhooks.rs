//! Webhook subscriptions and the delivery outbox.

use diesel::prelude::*;

use super::crud::Child;
use super::schema::{webhook_deliveries as d, webhook_delivery_attempts as a, webhooks as w};
use super::sql::{FilterIf, Page};
use super::{DbConnection, StoreError, StoreResult};

/// One row of `webhooks`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = w)]
pub struct WebhookRow {
    pub id: String,
    pub org_id: String,
    /// The columns an update writes.
    #[diesel(embed)]
    pub content: WebhookChanges,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns a patch writes.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = w, treat_none_as_null = true)]
pub struct WebhookChanges {
    pub url: String,
    /// JSON array of event patterns.
    pub events: String,
    /// The signing secret, sealed with [`crate::crypto::Crypto`].
    pub secret_encrypted: String,
    pub active: i64,
    pub description: Option<String>,
}

/// One row of `webhook_deliveries`: an event owed to a webhook (or an ad-hoc target).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = d)]
pub struct DeliveryRow {
    pub id: String,
    pub org_id: String,
    pub webhook_id: Option<String>,
    /// Ad-hoc deliveries (no subscription): JSON `{"url", "secret_encrypted"}`.
    pub target: Option<String>,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub response_status: Option<i64>,
    pub error: Option<String>,
    pub created_at: String,
    pub completed_at: Option<String>,
}

pub const PENDING: &str = "pending";
pub const DELIVERING: &str = "delivering";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";

super::crud::resource_table!(webhooks, WebhookRow, versioned WebhookChanges);
super::crud::child_table!(webhook_deliveries, webhook_id, DeliveryRow);

/// A page of webhooks, newest first, and how many the organization has.
pub fn list(
    conn: &mut DbConnection, org_id: &str, page: &Page,
) -> StoreResult<(Vec<WebhookRow>, i64)> {
    let filtered = || w::table.filter(w::org_id.eq(org_id)).into_boxed();
    super::crud::newest_first!(conn, w, WebhookRow, filtered, page)
}

/// The organization's active webhooks (to fan an event out to).
///
/// On PostgreSQL the rows are locked `FOR KEY SHARE` for the caller's transaction: a webhook
/// deleted meanwhile is either not returned or waits for the caller's commit, so the
/// deliveries inserted for it never miss their webhook (a foreign-key failure, seen under
/// conform as a 503 on whatever write published the event). SQLite serializes writers.
pub fn active(conn: &mut DbConnection, org_id: &str) -> StoreResult<Vec<WebhookRow>> {
    let rows: Vec<WebhookRow> = w::table
        .filter(w::org_id.eq(org_id))
        .filter(w::active.eq(1))
        .order(w::id.asc())
        .select(WebhookRow::as_select())
        .load(conn)?;
    if rows.is_empty() || !matches!(conn, DbConnection::Postgres(_)) {
        return Ok(rows);
    }
    #[derive(diesel::QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    let locked: Vec<Locked> = diesel::sql_query(
        "SELECT id FROM webhooks WHERE org_id = $1 AND active = 1 ORDER BY id FOR KEY SHARE",
    )
    .bind::<diesel::sql_types::Text, _>(org_id)
    .load(conn)?;
    let locked: std::collections::HashSet<String> = locked.into_iter().map(|l| l.id).collect();
    Ok(rows
        .into_iter()
        .filter(|r| locked.contains(&r.id))
        .collect())
}

/// Inserts a new delivery.
pub fn insert_delivery(conn: &mut DbConnection, row: &DeliveryRow) -> StoreResult<()> {
    DeliveryRow::insert(conn, row)
}

/// A page of one webhook's deliveries, newest first, and how many match.
pub fn list_deliveries(
    conn: &mut DbConnection, org_id: &str, webhook_id: &str, status: Option<&str>, page: &Page,
) -> StoreResult<(Vec<DeliveryRow>, i64)> {
    let filtered =
        || DeliveryRow::under(org_id, webhook_id).filter_if(status.map(|s| d::status.eq(s)));
    super::crud::newest_first!(conn, d, DeliveryRow, filtered, page)
}

/// Claims up to `limit` deliveries that are due (pending and `next_attempt_at` passed) or
/// whose lease expired (their worker died mid-attempt): each becomes `delivering` under
/// `owner`'s lease until `lease_until`, with its attempt counted. On PostgreSQL concurrent
/// workers skip each other's rows (`FOR UPDATE SKIP LOCKED`); SQLite has one writer at a time
/// (`BEGIN IMMEDIATE`).
pub fn claim_due(
    conn: &mut DbConnection, owner: &str, now: &str, lease_until: &str, limit: i64,
) -> StoreResult<Vec<DeliveryRow>> {
    super::write_transaction(conn, |conn| {
        let ids: Vec<String> = match conn {
            DbConnection::Postgres(pg) => {
                #[derive(QueryableByName)]
                struct Id {
                    #[diesel(sql_type = diesel::sql_types::Text)]
                    id: String,
                }
                diesel::sql_query(
                    "SELECT id FROM webhook_deliveries \
                     WHERE (status = 'pending' AND next_attempt_at <= $1) \
                        OR (status = 'delivering' AND lease_expires_at <= $1) \
                     ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                )
                .bind::<diesel::sql_types::Text, _>(now)
                .bind::<diesel::sql_types::BigInt, _>(limit)
                .load::<Id>(pg)?
                .into_iter()
                .map(|r| r.id)
                .collect()
            }
            DbConnection::Sqlite(_) => d::table
                .filter(
                    d::status
                        .eq(PENDING)
                        .and(d::next_attempt_at.le(now))
                        .or(d::status.eq(DELIVERING).and(d::lease_expires_at.le(now))),
                )
                .order((d::next_attempt_at.asc(), d::id.asc()))
                .limit(limit)
                .select(d::id)
                .load(conn)?,
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        diesel::update(d::table.filter(d::id.eq_any(&ids)))
            .set((
                d::status.eq(DELIVERING),
                d::lease_owner.eq(owner),
                d::lease_expires_at.eq(lease_until),
                d::last_attempt_at.eq(now),
                d::attempts.eq(d::attempts + 1),
            ))
            .execute(conn)?;
        d::table
            .filter(d::id.eq_any(&ids))
            .order(d::id.asc())
            .select(DeliveryRow::as_select())
            .load(conn)
            .map_err(StoreError::from)
    })
}

/// One attempt of a delivery, kept beside it (the delivery row holds only the last one's).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = a)]
pub struct AttemptRow {
    pub delivery_id: String,
    /// Its number, from 1.
    pub attempt: i64,
    pub org_id: String,
    pub started_at: String,
    pub duration_ms: i64,
    pub response_status: Option<i64>,
    pub error: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// The attempt itself, recorded with the outcome.
    pub attempt: AttemptRow,
    pub response_status: Option<i64>,
    pub error: Option<String>,
    /// `succeeded`, `failed` (no attempts left) or `pending` (retry at `next_attempt_at`).
    pub status: &'static str,
    pub next_attempt_at: Option<String>,
    pub completed_at: Option<String>,
}

/// Records an attempt and its outcome, only while `owner` still holds the lease (a worker
/// whose lease expired and was reclaimed must not overwrite the newer attempt). Returns
/// whether it was recorded.
pub fn finish_attempt(
    conn: &mut DbConnection, id: &str, owner: &str, outcome: &AttemptOutcome,
) -> StoreResult<bool> {
    super::write_transaction(conn, |conn| {
        let recorded = record_outcome(conn, id, owner, outcome)?;
        if recorded {
            diesel::insert_into(a::table)
                .values(&outcome.attempt)
                .execute(conn)?;
        }
        Ok(recorded)
    })
}

/// Every attempt of the organization's delivery `delivery_id`, first first.
pub fn attempts(
    conn: &mut DbConnection, org_id: &str, delivery_id: &str,
) -> StoreResult<Vec<AttemptRow>> {
    let q = a::table
        .filter(a::org_id.eq(org_id))
        .filter(a::delivery_id.eq(delivery_id))
        .order(a::attempt.asc());
    Ok(q.select(AttemptRow::as_select()).load(conn)?)
}

fn record_outcome(
    conn: &mut DbConnection, id: &str, owner: &str, outcome: &AttemptOutcome,
) -> StoreResult<bool> {
    let n = diesel::update(
        d::table
            .filter(d::id.eq(id))
            .filter(d::status.eq(DELIVERING))
            .filter(d::lease_owner.eq(owner)),
    )
    .set((
        d::status.eq(outcome.status),
        d::response_status.eq(outcome.response_status),
        d::error.eq(&outcome.error),
        d::next_attempt_at.eq(&outcome.next_attempt_at),
        d::completed_at.eq(&outcome.completed_at),
        d::lease_owner.eq(None::<String>),
        d::lease_expires_at.eq(None::<String>),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Gives the leases of `owner` back (a worker shutting down), so another worker retries
/// those deliveries at once instead of after the lease.
pub fn release_leases(conn: &mut DbConnection, owner: &str, now: &str) -> StoreResult<usize> {
    diesel::update(
        d::table
            .filter(d::status.eq(DELIVERING))
            .filter(d::lease_owner.eq(owner)),
    )
    .set((
        d::status.eq(PENDING),
        d::next_attempt_at.eq(now),
        d::lease_owner.eq(None::<String>),
        d::lease_expires_at.eq(None::<String>),
    ))
    .execute(conn)
    .map_err(StoreError::from)
}

/// The outbox now: pending deliveries, those among them that failed at least once, and the
/// seconds the most overdue has been due.
pub fn backlog(conn: &mut DbConnection) -> StoreResult<(i64, i64, i64)> {
    let now = chrono::Utc::now();
    let pending_rows = || d::table.filter(d::status.eq(PENDING));
    let pending: i64 = pending_rows().count().get_result(conn)?;
    let retrying: i64 = pending_rows()
        .filter(d::attempts.gt(0))
        .count()
        .get_result(conn)?;
    let oldest: Option<String> = pending_rows()
        .filter(d::next_attempt_at.le(crate::ids::format_time(now)))
        .select(diesel::dsl::min(d::next_attempt_at))
        .first::<Option<String>>(conn)?;
    Ok((
        pending,
        retrying,
        crate::ids::seconds_since(oldest.as_deref(), now),
    ))
}
