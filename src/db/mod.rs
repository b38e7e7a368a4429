//! Storage: diesel over SQLite (embedded default) or PostgreSQL, behind one connection type.
//!
//! The schema uses only types both backends share (TEXT, BIGINT), so one `table!` and one
//! set of queries serve both through diesel's `MultiConnection`. Every call runs on tokio's
//! blocking pool ([`Store::run`]), never on the async workers.

pub mod agents;
pub mod conversations;
pub mod crud;
pub mod deployments;
pub mod evaluations;
pub mod events;
pub mod executions;
pub mod idempotency;
pub mod identity;
pub mod knowledge;
pub mod models;
pub mod ratelimit;
pub mod schema;
pub mod sealed;
pub mod security;
pub mod security_scans;
pub mod sql;
pub mod templates;
pub mod tools;
pub mod twins;
pub mod types;
pub mod usage;
pub mod vault;
pub mod webhooks;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, ManageConnection, R2D2Connection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// A connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Sqlite(diesel::SqliteConnection),
    Postgres(diesel::PgConnection),
}

/// Which engine the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// What can go wrong in storage, in terms the domain understands.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(diesel::result::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// The one classification of diesel's errors: a missing row is [`StoreError::NotFound`], a
/// unique violation a [`StoreError::Conflict`], anything else a database failure; so a plain
/// `?` on a diesel result says what happened.
impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::NotFound => StoreError::NotFound,
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StoreError::Conflict(info.message().to_string())
            }
            other => StoreError::Database(other),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A lookup whose "not found" is an answer, not an error.
pub trait Found<T> {
    /// `None` for [`StoreError::NotFound`]; other errors stay errors.
    fn found(self) -> StoreResult<Option<T>>;
}

impl<T> Found<T> for StoreResult<T> {
    fn found(self) -> StoreResult<Option<T>> {
        match self {
            Ok(t) => Ok(Some(t)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Runs `f` in a transaction that takes the write lock up front. On SQLite a deferred
/// transaction that reads and then writes fails with "database is locked" when another
/// writer got in between; `BEGIN IMMEDIATE` waits (up to `busy_timeout`) instead.
/// `f` must not open transactions of its own.
pub fn write_transaction<T>(
    conn: &mut DbConnection, f: impl FnOnce(&mut DbConnection) -> StoreResult<T>,
) -> StoreResult<T> {
    if !matches!(conn, DbConnection::Sqlite(_)) {
        return conn.transaction(f);
    }
    conn.batch_execute("BEGIN IMMEDIATE")?;
    match f(conn) {
        Ok(value) => {
            if let Err(e) = conn.batch_execute("COMMIT") {
                let _ = conn.batch_execute("ROLLBACK");
                return Err(StoreError::from(e));
            }
            Ok(value)
        }
        Err(e) => {
            let _ = conn.batch_execute("ROLLBACK");
            Err(e)
        }
    }
}

/// `SELECT … FOR UPDATE` of one row of `table` on PostgreSQL (SQLite's write transaction
/// already holds the lock). `table` is a constant of the caller, never user input.
pub(crate) fn lock_row(
    conn: &mut DbConnection, table: &str, org_id: &str, id: &str,
) -> StoreResult<()> {
    if let DbConnection::Postgres(pg) = conn {
        diesel::sql_query(format!(
            "SELECT id FROM {table} WHERE org_id = $1 AND id = $2 FOR UPDATE"
        ))
        .bind::<diesel::sql_types::Text, _>(org_id)
        .bind::<diesel::sql_types::Text, _>(id)
        .execute(pg)?;
    }
    Ok(())
}

/// Opens connections for a pool, choosing the backend from the URL.
#[derive(Debug, Clone)]
struct Manager {
    backend: Backend,
    target: String,
    /// SQLite connections of the read pool: `query_only`, so a write sent there by mistake
    /// fails rather than taking the write lock.
    read_only: bool,
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConnection, r2d2::Error> {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = diesel::SqliteConnection::establish(&self.target)
                    .map_err(r2d2::Error::ConnectionError)?;
                // WAL is switched on once, before the pools open ([`sqlite_wal`]): switching
                // takes a lock that the pool's other connections, opened at the same time,
                // failed on ("database is locked", retried by the pool).
                conn.batch_execute(if self.read_only {
                    "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; \
                     PRAGMA query_only = ON;"
                } else {
                    "PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; \
                     PRAGMA foreign_keys = ON;"
                })
                .map_err(r2d2::Error::QueryError)?;
                Ok(DbConnection::Sqlite(conn))
            }
            Backend::Postgres => diesel::PgConnection::establish(&self.target)
                .map(DbConnection::Postgres)
                .map_err(r2d2::Error::ConnectionError),
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        conn.ping().map(|_| ()).map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

/// Puts a SQLite database file in WAL mode (it stays so), where readers never wait for the
/// writer nor it for them.
fn sqlite_wal(target: &str) -> anyhow::Result<()> {
    let mut conn = diesel::SqliteConnection::establish(target)?;
    conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL;")?;
    Ok(())
}

/// Builds a pool of `size` connections.
fn build_pool(manager: Manager, size: u32) -> anyhow::Result<r2d2::Pool<Manager>> {
    let backend = manager.backend;
    r2d2::Pool::builder()
        .max_size(size.max(1))
        .connection_timeout(Duration::from_secs(5))
        // A broken connection shows as a failed query (503) and is then discarded;
        // pinging on every checkout would double the queries of every request.
        .test_on_check_out(false)
        .build(manager)
        .map_err(|e| anyhow::anyhow!("cannot connect to the {} database: {e}", backend.as_str()))
}

/// The database: a pool of connections to one backend, and on a SQLite file a second pool
/// for read-only work ([`Store::read`]), so that reads never queue behind writes for a
/// connection (in WAL mode SQLite's readers do not wait for its writer either).
#[derive(Clone)]
pub struct Store {
    pool: r2d2::Pool<Manager>,
    /// The read pool; `None` on PostgreSQL and on an in-memory SQLite database (its
    /// connections would each see a database of their own), where reads use `pool`.
    reads: Option<r2d2::Pool<Manager>>,
    backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

/// Where the database is: `postgres://…`, `sqlite://path`, `sqlite::memory:` or a file path.
pub fn parse_url(url: &str) -> (Backend, String) {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        (Backend::Postgres, url.to_string())
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        (Backend::Sqlite, path.to_string())
    } else if let Some(path) = url.strip_prefix("sqlite:") {
        (Backend::Sqlite, path.to_string())
    } else {
        (Backend::Sqlite, url.to_string())
    }
}

/// Creates the SQLite file readable by its owner only (0600) when it does not exist yet: its
/// rows hold hashes, sealed secrets and every tenant's data. SQLite gives its `-wal` and
/// `-shm` files the database file's mode.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl Store {
    /// Connects, creating the SQLite file (0600) and its directory if needed, and runs pending
    /// migrations.
    pub fn open(url: &str, pool_size: u32) -> anyhow::Result<Self> {
        let (backend, target) = parse_url(url);
        if backend == Backend::Sqlite
            && target != ":memory:"
            && let Some(dir) = std::path::Path::new(&target).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let file = backend == Backend::Sqlite && target != ":memory:";
        if file {
            create_private(std::path::Path::new(&target))?;
            sqlite_wal(&target)?;
        }
        let manager = Manager {
            backend,
            target,
            read_only: false,
        };
        let pool = build_pool(manager.clone(), pool_size)?;
        let mut conn = pool.get()?;
        let applied = match &mut *conn {
            DbConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
            DbConnection::Postgres(c) => c
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|v| v.len()),
        }
        .map_err(|e| anyhow::anyhow!("migrations failed: {e}"))?;
        if applied > 0 {
            tracing::info!(applied, backend = backend.as_str(), "database migrated");
        }
        drop(conn);
        // Opened after the migrations, so that no read connection sees an older schema.
        let reads = if file {
            let readers = Manager {
                read_only: true,
                ..manager
            };
            Some(build_pool(readers, pool_size)?)
        } else {
            None
        };
        Ok(Self {
            pool,
            reads,
            backend,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool's size and its idle connections now.
    pub fn pool_state(&self) -> (u32, u32) {
        let state = self.pool.state();
        (self.pool.max_size(), state.idle_connections)
    }

    /// Runs blocking storage work on tokio's blocking pool with a pooled connection.
    pub async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> StoreResult<T> + Send + 'static,
    {
        on_pool(self.pool.clone(), f).await
    }

    /// Runs read-only storage work like [`Store::run`], on a connection of the read pool
    /// where there is one (a SQLite file): it never waits for a connection that a write
    /// holds. A write in `f` fails there (`query_only`).
    pub async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> StoreResult<T> + Send + 'static,
    {
        let pool = self.reads.as_ref().unwrap_or(&self.pool).clone();
        on_pool(pool, f).await
    }

    /// Runs a point read (a row by its key: microseconds on SQLite) like [`Store::read`], but
    /// on a SQLite file inline, on the calling thread, with an idle connection of the read
    /// pool: handing so short a query to the blocking pool and back costs more than the
    /// query. When no read connection is idle (and on PostgreSQL, where a query is a network
    /// round trip) it goes to the blocking pool like any read. Never for work that scans
    /// without a bound (a list page is bounded: it counts at most `sql::COUNT_UP_TO` rows).
    pub async fn lookup<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> StoreResult<T> + Send + 'static,
    {
        if let Some(mut conn) = self.reads.as_ref().and_then(|pool| pool.try_get()) {
            return f(&mut conn);
        }
        self.read(f).await
    }

    /// Runs blocking storage work on the current thread (CLI commands, start-up).
    pub fn run_blocking<T>(
        &self, f: impl FnOnce(&mut DbConnection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut conn = self
            .pool
            .get()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        f(&mut conn)
    }

    /// Round-trips a trivial query; used by the health check.
    pub async fn ping(&self) -> StoreResult<()> {
        self.run(|conn| conn.batch_execute("SELECT 1").map_err(StoreError::from))
            .await
    }
}

/// Runs `f` with a connection of `pool` on tokio's blocking pool.
async fn on_pool<T, F>(pool: r2d2::Pool<Manager>, f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce(&mut DbConnection) -> StoreResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut conn = pool
            .get()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        f(&mut conn)
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sqlite_file_reads_on_its_own_read_only_pool() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("store_test"));
        let path = dir.join("db.sqlite");
        let store = Store::open(&path.to_string_lossy(), 2).expect("the store opens");
        let write = |conn: &mut DbConnection| {
            conn.batch_execute(
                "INSERT INTO organizations (id, name, created_at) VALUES ('org_x', 'x', 'now')",
            )
            .map_err(StoreError::from)
        };
        // A write sent to the read pool fails rather than taking the write lock.
        assert!(store.read(write).await.is_err());
        assert_eq!(
            store.read(identity::count_organizations).await.ok(),
            Some(0)
        );
        store.run(write).await.expect("the write pool writes");
        // Point reads run inline on an idle read connection and see the write.
        assert_eq!(
            store.lookup(identity::count_organizations).await.ok(),
            Some(1)
        );
        assert_eq!(
            store.read(identity::count_organizations).await.ok(),
            Some(1)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn counts_stop_at_their_limit() {
        use super::schema::organizations as o;
        use super::sql::{COUNT_UP_TO, CountOf, Page, count_limit};
        let store = Store::open(":memory:", 1).expect("the store opens");
        let counted = store.run_blocking(|conn| {
            for i in 0..3 {
                diesel::insert_into(o::table)
                    .values((
                        o::id.eq(format!("org_{i}")),
                        o::name.eq(format!("org {i}")),
                        o::created_at.eq("now"),
                    ))
                    .execute(conn)?;
            }
            let up_to_two: i64 = CountOf(o::table.select(o::id).limit(2)).get_result(conn)?;
            let all: i64 = CountOf(o::table.select(o::id).limit(10)).get_result(conn)?;
            Ok((up_to_two, all))
        });
        assert_eq!(counted.map_err(|e| e.to_string()), Ok((2, 3)));
        // A page far past the bound counts one past its end, so a next page still shows.
        assert_eq!(count_limit(0, 20), COUNT_UP_TO);
        let deep = Page {
            after_id: None,
            offset: 20_000,
            limit: 20,
        };
        assert_eq!(deep.count_limit(), 20_021);
    }
}
