//! The one durable queue for background work: a row in `jobs` per piece of work (an
//! execution, a knowledge sync, a simulation, an evaluation run), and bounded [`WorkerPool`]s
//! per process that claim and run them: one for executions, syncs and simulations, one for
//! evaluation runs, which wait on executions. (Webhook deliveries have an outbox of their own:
//! [`crate::webhooks`].)
//!
//! Why a table and not a channel: the server keeps no state outside the database, so any
//! replica can run any job, and nothing accepted is lost when a process dies. A claim takes
//! a *lease* (`lease_owner`, `lease_until`) that the pool renews while the job runs; a job
//! whose lease ran out is claimable again by any replica. A reclaimed job with attempts left
//! runs again; one without is handed to its kind's [`Job::abandon`] (an execution is then
//! marked failed: "interrupted").
//!
//! A kind of job is a type implementing [`Job`]: its name in `jobs.kind` and the type of its
//! payload (JSON in `jobs.payload`), registered on a pool through a [`Registry`]; jobs are
//! queued with their typed payload ([`NewJob::of`]).
//!
//! Claims take `FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas never queue on each
//! other's candidates; on SQLite the claim is one `BEGIN IMMEDIATE` transaction (one writer).
//! The pool polls every [`PoolConfig::poll`] and is woken at once by [`WorkerPool::wake`]
//! after an in-process enqueue.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::Text;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, watch};

use crate::db::schema::jobs;
use crate::db::types::text_enum;
use crate::db::{DbConnection, Store, StoreError, StoreResult};

/// A boxed future, as the job handlers return them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

text_enum! {
    /// Where a job is.
    pub enum JobStatus {
        /// Waiting to be claimed (from `run_after` on).
        Queued = "queued",
        /// Claimed: its lease holder runs it.
        Running = "running",
        Succeeded = "succeeded",
        /// Out of attempts.
        Failed = "failed",
    }
}

/// One row of `jobs`.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = jobs)]
pub struct JobRow {
    pub id: String,
    /// What runs it: the [`Job::KIND`] of a registered job (`execution`, …).
    pub kind: String,
    pub org_id: String,
    /// The agent the job serves, if any: what per-agent concurrency limits count by.
    pub agent_id: Option<String>,
    /// JSON the handler understands.
    pub payload: String,
    pub status: JobStatus,
    /// Claims so far, this one included.
    pub attempts: i64,
    pub max_attempts: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<String>,
    /// Not claimable before this time.
    pub run_after: String,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A job to enqueue, its payload `P` (JSON when stored); [`NewJob::of`] makes a typed one.
#[derive(Debug, Clone)]
pub struct NewJob<P = Value> {
    pub kind: String,
    pub org_id: String,
    pub agent_id: Option<String>,
    pub payload: P,
    /// Claims allowed; a job whose lease runs out after the last one is abandoned.
    pub max_attempts: i64,
}

impl<P> NewJob<P> {
    /// A job of kind `J` in `org_id` carrying `payload`, claimed once (a lost run is
    /// abandoned, not run again).
    pub fn of<J: Job<Payload = P>>(org_id: &str, payload: P) -> Self {
        Self {
            kind: J::KIND.to_string(),
            org_id: org_id.to_string(),
            agent_id: None,
            payload,
            max_attempts: 1,
        }
    }

    /// This job, counted against `agent_id`'s concurrency limit.
    pub fn for_agent(mut self, agent_id: &str) -> Self {
        self.agent_id = Some(agent_id.to_string());
        self
    }
}

/// Inserts a queued job (inside the caller's transaction, so the job exists exactly when
/// the resource it works on does) and returns it.
pub fn enqueue<P: Serialize>(conn: &mut DbConnection, job: &NewJob<P>) -> StoreResult<JobRow> {
    enqueue_as(conn, &crate::ids::new_id("job"), job)
}

/// [`enqueue`] under the id `id`.
pub fn enqueue_as<P: Serialize>(
    conn: &mut DbConnection, id: &str, job: &NewJob<P>,
) -> StoreResult<JobRow> {
    let now = crate::ids::now();
    let payload = serde_json::to_value(&job.payload)
        .map_err(|e| StoreError::Corrupt(format!("the payload of a {} job: {e}", job.kind)))?;
    let row = JobRow {
        id: id.to_string(),
        kind: job.kind.clone(),
        org_id: job.org_id.clone(),
        agent_id: job.agent_id.clone(),
        payload: payload.to_string(),
        status: JobStatus::Queued,
        attempts: 0,
        max_attempts: job.max_attempts.max(1),
        lease_owner: None,
        lease_until: None,
        run_after: now.clone(),
        last_error: None,
        created_at: now.clone(),
        updated_at: now,
    };
    diesel::insert_into(jobs::table)
        .values(&row)
        .execute(conn)?;
    Ok(row)
}

/// The payload of a job that works on the row of the same id (a sync, an evaluation run).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RowPayload {
    /// The row's id. Earlier versions wrote it as `sync_id` or `run_id`; their queued jobs
    /// still run.
    #[serde(alias = "sync_id", alias = "run_id")]
    pub id: String,
}

/// Queues the job of kind `J` that works on the row `row_id`, under the row's id (so the row
/// and its job are one id, and its payload names it): inside the transaction that writes the
/// row. It runs once: a row whose server died is failed by the kind's `abandon`, and running
/// it again is the user's call.
pub fn enqueue_row<J: Job<Payload = RowPayload>>(
    conn: &mut DbConnection, org_id: &str, row_id: &str,
) -> StoreResult<()> {
    enqueue_for_row(conn, J::KIND, org_id, row_id)
}

/// [`enqueue_row`] by the kind's name, unchecked: the row job of any kind (tests forge rows
/// with it).
pub fn enqueue_for_row(
    conn: &mut DbConnection, kind: &str, org_id: &str, row_id: &str,
) -> StoreResult<()> {
    let job = NewJob {
        kind: kind.into(),
        org_id: org_id.to_string(),
        agent_id: None,
        payload: RowPayload {
            id: row_id.to_string(),
        },
        max_attempts: 1,
    };
    enqueue_as(conn, row_id, &job).map(|_| ())
}

/// The tables whose rows are run by a job of the same id, what they are called, and the error
/// a row left `queued` or `running` without a job is failed with (see [`fail_orphans`]). Each
/// has `id`, `status`, `error` and `finished_at` columns.
pub const JOB_ROWS: &[(&str, &str, &str)] = &[
    (
        "knowledge_syncs",
        "knowledge syncs",
        "interrupted by a server restart",
    ),
    (
        "evaluation_runs",
        "evaluation runs",
        "interrupted: the server restarted during the run",
    ),
    (
        "simulations",
        "simulations",
        "interrupted by a server restart",
    ),
];

/// At start: fails the rows of [`JOB_ROWS`] left `queued` or `running` without a job (by a
/// version that ran them in process), which nothing will ever finish. A row with a job is the
/// queue's: another replica may be running it, and a lost one is abandoned through its lease.
/// Returns how many rows of each table (by what they are called) were failed.
pub fn fail_orphans(conn: &mut DbConnection) -> StoreResult<Vec<(&'static str, usize)>> {
    let postgres = matches!(conn, DbConnection::Postgres(_));
    let (error, at) = if postgres { ("$1", "$2") } else { ("?", "?") };
    let now = crate::ids::now();
    let mut failed = Vec::new();
    for &(table, what, message) in JOB_ROWS {
        // `table` is a constant of the registry, never input.
        let sql = format!(
            "UPDATE {table} SET status = 'failed', error = {error}, finished_at = {at} \
             WHERE status IN ('queued', 'running') \
             AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = {table}.id)"
        );
        let n = diesel::sql_query(sql)
            .into_boxed::<crate::db::MultiBackend>()
            .bind::<Text, _>(message)
            .bind::<Text, _>(&now)
            .execute(conn)?;
        failed.push((what, n));
    }
    Ok(failed)
}

/// Jobs due and waiting across every server, and the seconds the oldest has waited.
pub fn backlog(conn: &mut DbConnection) -> StoreResult<(i64, i64)> {
    let now = chrono::Utc::now();
    let due = || {
        jobs::table
            .filter(jobs::status.eq(JobStatus::Queued))
            .filter(jobs::run_after.le(crate::ids::format_time(now)))
    };
    let count: i64 = due().count().get_result(conn)?;
    let oldest: Option<String> = due()
        .select(diesel::dsl::min(jobs::run_after))
        .first(conn)?;
    Ok((count, crate::ids::seconds_since(oldest.as_deref(), now)))
}

/// Limits a claim respects.
#[derive(Debug, Clone, Default)]
pub struct ClaimLimits {
    /// At most this many running (leased) jobs per agent; `None` is unlimited. With
    /// `from_deployments`, the limit of agents that have no deployment row yet (default 1:
    /// such an agent is deployed with one replica, its row written when first asked about).
    ///
    /// On PostgreSQL two replicas claiming at the same instant may each see one free slot;
    /// a strict limit would need an advisory lock per agent.
    pub per_agent_in_flight: Option<i64>,
    /// An agent's deployment sets its limit: its replicas are its worker slots (none while a
    /// restart drains executions started before it; see `runtime::embedded::slots`).
    pub from_deployments: bool,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    id: String,
}

fn later(now: chrono::DateTime<chrono::Utc>, by: Duration) -> String {
    let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::zero());
    crate::ids::format_time(now + by)
}

/// The SQL expression of how many jobs of the candidate `j`'s agent may run at once, if
/// `limits` cap it.
fn in_flight_limit(limits: &ClaimLimits) -> Option<String> {
    let fixed = limits.per_agent_in_flight.map(|m| m.max(0));
    match (limits.from_deployments, fixed) {
        (false, None) => None,
        (false, Some(max)) => Some(max.to_string()),
        (true, otherwise) => Some(format!(
            "COALESCE((SELECT CASE WHEN d.state = 'restarting' AND EXISTS (SELECT 1 FROM \
             executions x WHERE x.agent_id = d.agent_id AND x.status = 'running' AND \
             (x.started_at IS NULL OR x.started_at < d.drain_before)) THEN 0 \
             ELSE d.target_replicas END FROM agent_deployments d WHERE d.agent_id = j.agent_id), {})",
            otherwise.unwrap_or(1)
        )),
    }
}

/// Claims the next due job of one of `kinds` for `owner`, leased for `lease`: a queued job
/// whose `run_after` has come, or a running one whose lease ran out (its holder died).
pub fn claim(
    conn: &mut DbConnection, owner: &str, lease: Duration, kinds: &[String], limits: &ClaimLimits,
) -> StoreResult<Option<JobRow>> {
    if kinds.is_empty() {
        return Ok(None);
    }
    let now_t = chrono::Utc::now();
    let now = crate::ids::format_time(now_t);
    let postgres = matches!(conn, DbConnection::Postgres(_));
    // Placeholders: `$n` on PostgreSQL, `?` on SQLite, bound in order of appearance.
    let mut n = 0;
    let mut ph = || {
        n += 1;
        if postgres {
            format!("${n}")
        } else {
            "?".to_string()
        }
    };
    let (now1, now2) = (ph(), ph());
    let kind_list: Vec<String> = kinds.iter().map(|_| ph()).collect();
    let mut sql = format!(
        "SELECT j.id AS id FROM jobs j WHERE ((j.status = 'queued' AND j.run_after <= {now1}) \
         OR (j.status = 'running' AND j.lease_until < {now2})) AND j.kind IN ({})",
        kind_list.join(", ")
    );
    let mut binds: Vec<String> = vec![now.clone(), now.clone()];
    binds.extend(kinds.iter().cloned());
    if let Some(limit) = in_flight_limit(limits) {
        let now3 = ph();
        sql.push_str(&format!(
            " AND (j.agent_id IS NULL OR (SELECT COUNT(*) FROM jobs r WHERE r.agent_id = j.agent_id \
             AND r.status = 'running' AND r.lease_until >= {now3}) < {limit})"
        ));
        binds.push(now.clone());
    }
    sql.push_str(" ORDER BY j.run_after, j.id LIMIT 1");
    if postgres {
        sql.push_str(" FOR UPDATE SKIP LOCKED");
    }
    let lease_until = later(now_t, lease);
    crate::db::write_transaction(conn, |conn| {
        let mut q = diesel::sql_query(sql.clone()).into_boxed::<crate::db::MultiBackend>();
        for b in &binds {
            q = q.bind::<Text, _>(b.clone());
        }
        let found: Vec<IdRow> = q.load(conn)?;
        let Some(IdRow { id }) = found.into_iter().next() else {
            return Ok(None);
        };
        diesel::update(jobs::table.filter(jobs::id.eq(&id)))
            .set((
                jobs::status.eq(JobStatus::Running),
                jobs::attempts.eq(jobs::attempts + 1),
                jobs::lease_owner.eq(owner),
                jobs::lease_until.eq(&lease_until),
                jobs::updated_at.eq(&now),
            ))
            .execute(conn)?;
        jobs::table
            .filter(jobs::id.eq(&id))
            .select(JobRow::as_select())
            .first(conn)
            .map(Some)
            .map_err(StoreError::from)
    })
}

/// Extends `owner`'s lease on job `id`; `false` when the lease was lost (expired and
/// reclaimed, or the job finished).
pub fn renew(conn: &mut DbConnection, id: &str, owner: &str, lease: Duration) -> StoreResult<bool> {
    let now_t = chrono::Utc::now();
    let written = diesel::update(
        jobs::table
            .filter(jobs::id.eq(id))
            .filter(jobs::lease_owner.eq(owner))
            .filter(jobs::status.eq(JobStatus::Running)),
    )
    .set((
        jobs::lease_until.eq(later(now_t, lease)),
        jobs::updated_at.eq(crate::ids::format_time(now_t)),
    ))
    .execute(conn)?;
    Ok(written == 1)
}

/// Ends job `id` held by `owner`: `succeeded`, or on `error` queued again after `retry_in`
/// while attempts remain, else `failed`. `false` when `owner` no longer held it.
pub fn finish(
    conn: &mut DbConnection, id: &str, owner: &str, error: Option<&str>, retry_in: Duration,
) -> StoreResult<bool> {
    let now_t = chrono::Utc::now();
    let now = crate::ids::format_time(now_t);
    let held = jobs::table
        .filter(jobs::id.eq(id))
        .filter(jobs::lease_owner.eq(owner))
        .filter(jobs::status.eq(JobStatus::Running));
    let row: Option<JobRow> = held.select(JobRow::as_select()).first(conn).optional()?;
    let Some(row) = row else {
        return Ok(false);
    };
    let (status, run_after) = match error {
        None => (JobStatus::Succeeded, row.run_after.clone()),
        Some(_) if row.attempts < row.max_attempts => (JobStatus::Queued, later(now_t, retry_in)),
        Some(_) => (JobStatus::Failed, row.run_after.clone()),
    };
    let written = diesel::update(held)
        .set((
            jobs::status.eq(status),
            jobs::run_after.eq(run_after),
            jobs::lease_owner.eq(None::<String>),
            jobs::lease_until.eq(None::<String>),
            jobs::last_error.eq(error),
            jobs::updated_at.eq(&now),
        ))
        .execute(conn)?;
    Ok(written == 1)
}

/// What a running job can watch.
#[derive(Debug, Clone)]
pub struct JobContext {
    lost: watch::Receiver<bool>,
}

impl JobContext {
    /// Resolves when the lease is lost; never when it is kept.
    pub async fn lost(&mut self) {
        while !*self.lost.borrow() {
            if self.lost.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A claimed job as its kind sees it: the row's id and organization, and its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed<P> {
    pub id: String,
    pub org_id: String,
    pub payload: P,
}

/// A kind of background work: its name in `jobs.kind`, the type of its payload, and how it
/// runs. Registered on a pool with [`Registry::register`]; queued with [`NewJob::of`].
pub trait Job: Send + Sync + 'static {
    /// The name of the kind, as stored in `jobs.kind`.
    const KIND: &'static str;
    /// What a job of this kind carries, as stored (JSON) in `jobs.payload`.
    type Payload: Serialize + DeserializeOwned + Send + 'static;

    /// Does the work; `Err` is the reason it failed (retried while attempts remain).
    fn run(&self, job: Claimed<Self::Payload>, ctx: JobContext) -> BoxFuture<Result<(), String>>;

    /// A job whose lease ran out with no attempts left (its holder died): record the loss on
    /// whatever the job worked on. Its payload is `None` when it does not parse. The job
    /// itself is then marked failed.
    fn abandon(&self, job: Claimed<Option<Self::Payload>>) -> BoxFuture<()>;

    /// A claimed job whose payload does not parse (`error` says why): by default it fails
    /// with that reason.
    fn unreadable(&self, job: Claimed<()>, error: String) -> BoxFuture<Result<(), String>> {
        let _ = job;
        Box::pin(async move { Err(error) })
    }
}

/// A job that works on the row of its own id (a sync, an evaluation run): a [`Job`] whose
/// payload is the [`RowPayload`], by what it does with that row.
pub trait RowJob: Clone + Send + Sync + 'static {
    /// The name of the kind ([`Job::KIND`]).
    const KIND: &'static str;

    /// Works on row `id`; `Err` is the reason the job failed.
    fn run_row(self, id: String) -> impl Future<Output = Result<(), String>> + Send + 'static;

    /// Records on row `id` that its job was lost ([`Job::abandon`]).
    fn abandon_row(self, id: String) -> impl Future<Output = ()> + Send + 'static;
}

impl<J: RowJob> Job for J {
    const KIND: &'static str = <J as RowJob>::KIND;
    type Payload = RowPayload;

    fn run(&self, job: Claimed<RowPayload>, _: JobContext) -> BoxFuture<Result<(), String>> {
        Box::pin(self.clone().run_row(job.id))
    }

    fn abandon(&self, job: Claimed<Option<RowPayload>>) -> BoxFuture<()> {
        Box::pin(self.clone().abandon_row(job.id))
    }
}

/// A [`Job`] with its payload type erased, as a pool holds it.
trait Erased: Send + Sync {
    fn run(&self, job: JobRow, ctx: JobContext) -> BoxFuture<Result<(), String>>;
    fn abandon(&self, job: JobRow) -> BoxFuture<()>;
}

/// The claimed `row` with its payload parsed.
fn claimed<P: DeserializeOwned>(row: JobRow) -> Result<Claimed<P>, (Claimed<()>, String)> {
    let header = Claimed {
        id: row.id,
        org_id: row.org_id,
        payload: (),
    };
    match serde_json::from_str(&row.payload) {
        Ok(payload) => Ok(Claimed {
            id: header.id,
            org_id: header.org_id,
            payload,
        }),
        Err(e) => Err((header, e.to_string())),
    }
}

impl<J: Job> Erased for J {
    fn run(&self, job: JobRow, ctx: JobContext) -> BoxFuture<Result<(), String>> {
        match claimed(job) {
            Ok(job) => Job::run(self, job, ctx),
            Err((job, error)) => self.unreadable(job, error),
        }
    }

    fn abandon(&self, job: JobRow) -> BoxFuture<()> {
        let job = match claimed(job) {
            Ok(job) => Claimed {
                id: job.id,
                org_id: job.org_id,
                payload: Some(job.payload),
            },
            Err((job, _)) => Claimed {
                id: job.id,
                org_id: job.org_id,
                payload: None,
            },
        };
        Job::abandon(self, job)
    }
}

/// The kinds of job a pool runs, by [`Job::KIND`].
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<&'static str, Arc<dyn Erased>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.kinds.keys()).finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// This registry with `job` running the jobs of kind `J::KIND` (in place of any other).
    pub fn register<J: Job>(mut self, job: J) -> Self {
        self.kinds.insert(J::KIND, Arc::new(job));
        self
    }

    /// The registered kinds' names.
    pub fn kinds(&self) -> Vec<String> {
        self.kinds.keys().map(|k| k.to_string()).collect()
    }

    fn get(&self, kind: &str) -> Option<Arc<dyn Erased>> {
        self.kinds.get(kind).cloned()
    }
}

/// How a pool runs.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Jobs running at once in this process.
    pub workers: usize,
    /// How long a claim holds a job without renewal; renewed every third of it.
    pub lease: Duration,
    /// How often an idle pool looks for work it was not woken for (other replicas'
    /// enqueues, expired leases).
    pub poll: Duration,
    pub limits: ClaimLimits,
}

/// The default number of workers: `AGENTPLANE_WORKERS`, else 4 per core.
pub fn default_workers() -> usize {
    std::env::var("AGENTPLANE_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() * 4)
                .unwrap_or(8)
        })
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            limits: ClaimLimits {
                per_agent_in_flight: None,
                from_deployments: true,
            },
        }
    }
}

struct Inner {
    store: Store,
    owner: String,
    config: PoolConfig,
    jobs: Registry,
    wake: Notify,
    permits: Arc<Semaphore>,
    stop: watch::Sender<bool>,
}

/// A bounded pool of workers over the `jobs` table. Cheap to clone.
#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("owner", &self.inner.owner)
            .field("workers", &self.inner.config.workers)
            .finish()
    }
}

impl WorkerPool {
    /// A pool running the kinds registered in `jobs`; idle until [`Self::start`].
    pub fn new(store: Store, config: PoolConfig, jobs: Registry) -> Self {
        let workers = config.workers.max(1);
        Self {
            inner: Arc::new(Inner {
                store,
                owner: crate::ids::new_id("worker"),
                permits: Arc::new(Semaphore::new(workers)),
                config,
                jobs,
                wake: Notify::new(),
                stop: watch::channel(false).0,
            }),
        }
    }

    /// This process's lease owner id.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The workers of this pool and how many run a job now.
    pub fn usage(&self) -> (usize, usize) {
        let workers = self.inner.config.workers.max(1);
        (
            workers,
            workers.saturating_sub(self.inner.permits.available_permits()),
        )
    }

    /// Wakes the dispatcher: call after enqueueing.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Stops claiming new jobs (running ones finish or lose their lease).
    pub fn stop(&self) {
        self.inner.stop.send_replace(true);
        self.inner.wake.notify_one();
    }

    /// Starts the dispatcher on the current tokio runtime.
    pub fn start(&self) {
        let pool = self.clone();
        tokio::spawn(async move { pool.dispatch().await });
    }

    async fn dispatch(self) {
        let kinds = self.inner.jobs.kinds();
        let mut stop = self.inner.stop.subscribe();
        loop {
            if *stop.borrow() {
                return;
            }
            let Ok(permit) = self.inner.permits.clone().acquire_owned().await else {
                return;
            };
            let (owner, lease, k, limits) = (
                self.inner.owner.clone(),
                self.inner.config.lease,
                kinds.clone(),
                self.inner.config.limits.clone(),
            );
            let claimed = self
                .inner
                .store
                .run(move |conn| claim(conn, &owner, lease, &k, &limits))
                .await;
            match claimed {
                Ok(Some(job)) => {
                    let pool = self.clone();
                    tokio::spawn(async move {
                        pool.execute(job).await;
                        drop(permit);
                    });
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot claim jobs"),
            }
            drop(permit);
            tokio::select! {
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(self.inner.config.poll) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn execute(&self, job: JobRow) {
        let Some(handler) = self.inner.jobs.get(&job.kind) else {
            return;
        };
        let (id, owner, lease) = (
            job.id.clone(),
            self.inner.owner.clone(),
            self.inner.config.lease,
        );
        if job.attempts > job.max_attempts {
            // Its holder died after the last attempt: nothing runs it again.
            handler.abandon(job).await;
            let (store, msg) = (self.inner.store.clone(), "abandoned: its lease ran out");
            let _ = store
                .run(move |conn| finish(conn, &id, &owner, Some(msg), Duration::ZERO))
                .await;
            return;
        }
        let (lost_tx, lost_rx) = watch::channel(false);
        let renewer = {
            let (store, id, owner) = (self.inner.store.clone(), id.clone(), owner.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let (i, o) = (id.clone(), owner.clone());
                    match store.run(move |conn| renew(conn, &i, &o, lease)).await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost_tx.send_replace(true);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, job = %id, "cannot renew a lease"),
                    }
                }
            })
        };
        let result = handler.run(job, JobContext { lost: lost_rx }).await;
        renewer.abort();
        let error = result.err();
        let retry = Duration::from_secs(5);
        let store = self.inner.store.clone();
        let outcome = store
            .run(move |conn| finish(conn, &id, &owner, error.as_deref(), retry))
            .await;
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "cannot record a finished job");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A store on SQLite, or on PostgreSQL when `AGENTPLANE_TEST_POSTGRES` is set.
    fn stores() -> Vec<Store> {
        let dir = std::env::temp_dir().join(crate::ids::new_id("jobs_test"));
        let mut out =
            vec![Store::open(&format!("sqlite://{}/t.db", dir.display()), 2).expect("sqlite")];
        if let Ok(base) = std::env::var("AGENTPLANE_TEST_POSTGRES")
            && !base.is_empty()
        {
            use diesel::Connection;
            let base = base.trim_end_matches('/').to_string();
            let name = format!("ap_jobs_{}", crate::ids::new_id("t").replace('_', ""));
            let mut admin =
                diesel::PgConnection::establish(&format!("{base}/postgres")).expect("pg admin");
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .expect("create database");
            out.push(Store::open(&format!("{base}/{name}"), 4).expect("postgres"));
        }
        out
    }

    fn org(store: &Store) -> String {
        let id = crate::ids::new_id("org");
        let now = crate::ids::now();
        let i = id.clone();
        store
            .run_blocking(move |conn| {
                diesel::sql_query(format!(
                    "INSERT INTO organizations (id, name, created_at) VALUES ('{i}', 'o', '{now}')"
                ))
                .execute(conn)
                .map_err(StoreError::from)
            })
            .expect("org");
        id
    }

    /// Runs `test` on a connection of each store ([`stores`]), for a new organization.
    fn on_each_store(test: impl Fn(&mut DbConnection, &str) -> StoreResult<()>) {
        for store in stores() {
            let org = org(&store);
            store
                .run_blocking(|conn| test(conn, &org))
                .expect("the test's storage work");
        }
    }

    fn job(org: &str, agent: Option<&str>) -> NewJob<Count> {
        let mut job = NewJob::of::<Recorder>(org, Count { n: 1 });
        job.agent_id = agent.map(str::to_string);
        job.max_attempts = 2;
        job
    }

    fn kinds() -> Vec<String> {
        vec!["test".into()]
    }

    #[test]
    fn claims_lease_renew_finish_and_reclaim_expired_leases() {
        on_each_store(|conn, org| {
            let a = enqueue(conn, &job(org, None))?;
            let lease = Duration::from_secs(60);
            let none = ClaimLimits::default();
            let got = claim(conn, "w1", lease, &kinds(), &none)?.expect("claims");
            assert_eq!((got.id.as_str(), got.attempts), (a.id.as_str(), 1));
            assert_eq!(got.lease_owner.as_deref(), Some("w1"));
            // Leased: nobody else gets it, and other kinds never match.
            assert!(claim(conn, "w2", lease, &kinds(), &none)?.is_none());
            assert!(claim(conn, "w2", lease, &["other".into()], &none)?.is_none());
            assert!(renew(conn, &a.id, "w1", lease)?);
            assert!(!renew(conn, &a.id, "w2", lease)?);
            // The holder dies: its lease runs out and another replica reclaims it.
            diesel::update(jobs::table.filter(jobs::id.eq(&a.id)))
                .set(jobs::lease_until.eq("2000-01-01T00:00:00.000000Z"))
                .execute(conn)?;
            let again = claim(conn, "w2", lease, &kinds(), &none)?.expect("reclaims");
            assert_eq!(
                (again.attempts, again.lease_owner.as_deref()),
                (2, Some("w2"))
            );
            // The old holder can neither renew nor finish it any more.
            assert!(!renew(conn, &a.id, "w1", lease)?);
            assert!(!finish(conn, &a.id, "w1", None, Duration::ZERO)?);
            // A failure with no attempts left is final.
            assert!(finish(conn, &a.id, "w2", Some("boom"), Duration::ZERO)?);
            let row: JobRow = jobs::table
                .filter(jobs::id.eq(&a.id))
                .select(JobRow::as_select())
                .first(conn)?;
            assert_eq!(
                (row.status.as_str(), row.last_error.as_deref()),
                ("failed", Some("boom"))
            );
            // A failure with attempts left is queued again after the delay.
            let b = enqueue(conn, &job(org, None))?;
            claim(conn, "w1", lease, &kinds(), &none)?.expect("b");
            assert!(finish(conn, &b.id, "w1", Some("flaky"), Duration::ZERO)?);
            let b2 = claim(conn, "w1", lease, &kinds(), &none)?.expect("retried");
            assert_eq!((b2.id, b2.attempts), (b.id, 2));
            Ok(())
        });
    }

    #[test]
    fn the_per_agent_limit_holds_back_an_agents_extra_jobs() {
        on_each_store(|conn, org| {
            let one = ClaimLimits {
                per_agent_in_flight: Some(1),
                from_deployments: false,
            };
            let lease = Duration::from_secs(60);
            enqueue(conn, &job(org, Some("agent_a")))?;
            enqueue(conn, &job(org, Some("agent_a")))?;
            let b = enqueue(conn, &job(org, Some("agent_b")))?;
            let first = claim(conn, "w", lease, &kinds(), &one)?.expect("a1");
            assert_eq!(first.agent_id.as_deref(), Some("agent_a"));
            let second = claim(conn, "w", lease, &kinds(), &one)?.expect("b");
            assert_eq!(second.id, b.id, "agent_a's second job waits");
            assert!(claim(conn, "w", lease, &kinds(), &one)?.is_none());
            assert!(finish(conn, &first.id, "w", None, Duration::ZERO)?);
            let third = claim(conn, "w", lease, &kinds(), &one)?.expect("a2");
            assert_eq!(third.agent_id.as_deref(), Some("agent_a"));
            Ok(())
        });
    }

    #[test]
    fn an_agents_deployment_sets_its_slots() {
        on_each_store(|conn, org| {
            let deployed = ClaimLimits {
                per_agent_in_flight: None,
                from_deployments: true,
            };
            let lease = Duration::from_secs(60);
            let deployment = |agent: &str, replicas: i64| crate::db::deployments::DeploymentRow {
                agent_id: agent.into(),
                org_id: org.to_string(),
                state: "deployed".into(),
                target_replicas: replicas,
                revision: 1,
                drain_before: None,
                deployed_at: crate::ids::now(),
                last_updated: crate::ids::now(),
            };
            crate::db::deployments::insert(conn, &deployment("agent_zero", 0))?;
            crate::db::deployments::insert(conn, &deployment("agent_two", 2))?;
            enqueue(conn, &job(org, Some("agent_zero")))?;
            for _ in 0..3 {
                enqueue(conn, &job(org, Some("agent_two")))?;
            }
            // No deployment row yet: deployed with one replica, so one at a time.
            for _ in 0..2 {
                enqueue(conn, &job(org, Some("agent_new")))?;
            }
            let mut claimed = Vec::new();
            while let Some(j) = claim(conn, "w", lease, &kinds(), &deployed)? {
                claimed.push(j.agent_id.unwrap_or_default());
            }
            claimed.sort();
            assert_eq!(claimed, ["agent_new", "agent_two", "agent_two"]);
            Ok(())
        });
    }

    struct Recorder {
        ran: Arc<Mutex<Vec<String>>>,
        abandoned: Arc<Mutex<Vec<String>>>,
        in_flight: Arc<std::sync::atomic::AtomicUsize>,
        peak: Arc<std::sync::atomic::AtomicUsize>,
    }

    /// What the test jobs carry.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Count {
        n: i64,
    }

    impl Job for Recorder {
        const KIND: &'static str = "test";
        type Payload = Count;

        fn run(&self, job: Claimed<Count>, _: JobContext) -> BoxFuture<Result<(), String>> {
            use std::sync::atomic::Ordering;
            let (ran, in_flight, peak) =
                (self.ran.clone(), self.in_flight.clone(), self.peak.clone());
            Box::pin(async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                ran.lock().map_err(|e| e.to_string())?.push(job.id);
                Ok(())
            })
        }

        fn abandon(&self, job: Claimed<Option<Count>>) -> BoxFuture<()> {
            let abandoned = self.abandoned.clone();
            Box::pin(async move {
                if let Ok(mut a) = abandoned.lock() {
                    a.push(job.id);
                }
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_runs_everything_bounded_and_abandons_dead_jobs() {
        for store in stores() {
            let org = org(&store);
            let rec = recorder();
            let (ran, abandoned, peak) = (rec.ran.clone(), rec.abandoned.clone(), rec.peak.clone());
            // A job another replica held when it died, out of attempts.
            let o = org.clone();
            let dead = store
                .run(move |conn| {
                    let mut j = job(&o, None);
                    j.max_attempts = 1;
                    let row = enqueue(conn, &j)?;
                    diesel::update(jobs::table.filter(jobs::id.eq(&row.id)))
                        .set((
                            jobs::status.eq(JobStatus::Running),
                            jobs::attempts.eq(1),
                            jobs::lease_owner.eq("worker_dead"),
                            jobs::lease_until.eq("2000-01-01T00:00:00.000000Z"),
                        ))
                        .execute(conn)?;
                    Ok(row.id)
                })
                .await
                .expect("dead job");
            let pool = WorkerPool::new(
                store.clone(),
                PoolConfig {
                    workers: 2,
                    lease: Duration::from_secs(5),
                    poll: Duration::from_millis(50),
                    limits: ClaimLimits::default(),
                },
                Registry::new().register(rec),
            );
            pool.start();
            let o = org.clone();
            store
                .run(move |conn| {
                    for _ in 0..6 {
                        enqueue(conn, &job(&o, None))?;
                    }
                    Ok(())
                })
                .await
                .expect("enqueue");
            pool.wake();
            for _ in 0..200 {
                if ran.lock().map(|r| r.len()).unwrap_or(0) == 6 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            pool.stop();
            assert_eq!(ran.lock().map(|r| r.len()).unwrap_or(0), 6);
            assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 2);
            assert_eq!(
                abandoned.lock().map(|a| a.clone()).unwrap_or_default(),
                vec![dead.clone()]
            );
            let status = store
                .run(move |conn| {
                    jobs::table
                        .filter(jobs::id.eq(&dead))
                        .select(jobs::status)
                        .first::<String>(conn)
                        .map_err(StoreError::from)
                })
                .await
                .expect("status");
            assert_eq!(status, "failed");
        }
    }

    fn recorder() -> Recorder {
        Recorder {
            ran: Arc::default(),
            abandoned: Arc::default(),
            in_flight: Arc::default(),
            peak: Arc::default(),
        }
    }

    #[tokio::test]
    async fn payloads_are_stored_as_json_and_parsed_into_their_type() {
        let new = NewJob::of::<Recorder>("org_1", Count { n: 7 });
        assert_eq!((new.kind.as_str(), new.max_attempts), ("test", 1));
        let row = |payload: &str| JobRow {
            id: "job_1".into(),
            kind: "test".into(),
            org_id: "org_1".into(),
            agent_id: None,
            payload: payload.into(),
            status: JobStatus::Running,
            attempts: 1,
            max_attempts: 1,
            lease_owner: None,
            lease_until: None,
            run_after: String::new(),
            last_error: None,
            created_at: String::new(),
            updated_at: String::new(),
        };
        let ctx = || JobContext {
            lost: watch::channel(false).1,
        };
        let rec = recorder();
        let stored = serde_json::to_value(&new.payload)
            .expect("json")
            .to_string();
        assert_eq!(stored, r#"{"n":7}"#);
        Erased::run(&rec, row(&stored), ctx()).await.expect("runs");
        assert_eq!(
            rec.ran.lock().map(|r| r.clone()).unwrap_or_default(),
            ["job_1"]
        );
        // A payload of another shape fails the job, naming why; abandoning it still works.
        let error = Erased::run(&rec, row("{}"), ctx())
            .await
            .expect_err("unreadable");
        assert!(error.contains("missing field `n`"), "{error}");
        Erased::abandon(&rec, row("not json")).await;
        // Row jobs queued by earlier versions named their row otherwise.
        for old in [
            r#"{"sync_id":"ks_1"}"#,
            r#"{"run_id":"ks_1"}"#,
            r#"{"id":"ks_1"}"#,
        ] {
            let parsed: RowPayload = serde_json::from_str(old).expect("a row payload");
            assert_eq!(parsed.id, "ks_1");
        }
        assert_eq!(
            rec.abandoned.lock().map(|a| a.clone()).unwrap_or_default(),
            ["job_1"]
        );
    }
}
