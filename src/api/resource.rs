//! The one shape of a CRUD resource's handlers, written once: list a page, create once per
//! `Idempotency-Key`, read (with `If-None-Match`), replace (with `If-Match`) and delete, each
//! storage failure answered with the resource's own not-found code.
//!
//! An area implements [`Resource`] for its API type once (its row, codes and conversion) and
//! its handlers call these functions; what is its own (validation, sealing secrets, the rows
//! it builds) stays in the area.

use agentplane_api::models::Pagination;
use agentplane_api::{Conditional, Idempotent, Paged};

use super::Handlers;
use super::idem;
use super::paging::{PageRequest, etag, etag_matches, not_modified};
use crate::auth::Caller;
use crate::db::crud::{Child, Identified, Stored, Versioned};
use crate::db::sql::{COUNT_UP_TO, Page};
use crate::db::{DbConnection, StoreError, StoreResult};
use crate::error::{Failure, store_error};

/// An item of an organization kept as one row, as the API shows it.
pub(crate) trait Resource: Sized + Send + 'static {
    /// The row that keeps it.
    type Row: Stored;
    /// The error code of a missing one (`MODEL_NOT_FOUND`).
    const NOT_FOUND: &'static str;

    /// The row as the API shows it.
    fn from_row(row: &Self::Row) -> Result<Self, StoreError>;
}

/// The changes a replace writes, worked out from the current row inside its transaction: a
/// `Failure` refuses the request and writes nothing.
pub(crate) type Changes<R> =
    StoreResult<Result<<<R as Resource>::Row as Versioned>::Changes, Failure>>;

/// How a store call reaches its connection: the writer, the read pool, or a point read
/// ([`crate::db::Store::run`], [`crate::db::Store::read`], [`crate::db::Store::lookup`]).
#[derive(Debug, Clone, Copy)]
enum Access {
    Write,
    Read,
    Point,
}

impl Handlers {
    /// Runs `f` on the store for the caller's organization, as `access` says; a storage
    /// failure is answered with `not_found` (the code of what `f` finds missing) or its own
    /// failure.
    async fn for_org<T: Send + 'static>(
        &self, caller: &Caller, not_found: &str, access: Access,
        f: impl FnOnce(&mut DbConnection, &str) -> StoreResult<T> + Send + 'static,
    ) -> Result<T, Failure> {
        let org = caller.org_id.clone();
        let work = move |conn: &mut DbConnection| f(conn, &org);
        let done = match access {
            Access::Write => self.store.run(work).await,
            Access::Read => self.store.read(work).await,
            Access::Point => self.store.lookup(work).await,
        };
        done.map_err(store_error(not_found, &caller.request_id))
    }

    /// Runs `f` on the store for the caller's organization ([`Handlers::for_org`]).
    pub(crate) async fn run_for<T: Send + 'static>(
        &self, caller: &Caller, not_found: &str,
        f: impl FnOnce(&mut DbConnection, &str) -> StoreResult<T> + Send + 'static,
    ) -> Result<T, Failure> {
        self.for_org(caller, not_found, Access::Write, f).await
    }

    /// [`Handlers::run_for`] of read-only work, on the store's read pool.
    pub(crate) async fn read_for<T: Send + 'static>(
        &self, caller: &Caller, not_found: &str,
        f: impl FnOnce(&mut DbConnection, &str) -> StoreResult<T> + Send + 'static,
    ) -> Result<T, Failure> {
        self.for_org(caller, not_found, Access::Read, f).await
    }

    /// The caller's row `id` (a point read).
    pub(crate) async fn row<R: Resource>(
        &self, caller: &Caller, id: String,
    ) -> Result<R::Row, Failure> {
        let get = move |conn: &mut DbConnection, org: &str| R::Row::get(conn, org, &id);
        self.for_org(caller, R::NOT_FOUND, Access::Point, get).await
    }

    /// The caller's row `id` of a child table, under `parent_id` (`not_found` otherwise).
    pub(crate) async fn child<Row: Child>(
        &self, caller: &Caller, parent_id: String, id: String, not_found: &str,
    ) -> Result<Row, Failure> {
        self.read_for(caller, not_found, move |conn, org| {
            Row::get(conn, org, &parent_id, &id)
        })
        .await
    }

    /// The caller's item `id`.
    pub(crate) async fn item<R: Resource>(
        &self, caller: &Caller, id: String,
    ) -> Result<R, Failure> {
        let row = self.row::<R>(caller, id).await?;
        R::from_row(&row).map_err(store_error(R::NOT_FOUND, &caller.request_id))
    }

    /// The caller's item `id`, or only its ETag when `If-None-Match` names it (a 304).
    pub(crate) async fn item_if_changed<R: Resource>(
        &self, caller: &Caller, id: String, if_none_match: Option<String>,
    ) -> Result<Conditional<R>, Failure>
    where
        R::Row: Versioned,
    {
        match self.row_if_changed::<R>(caller, id, if_none_match).await? {
            Conditional::Fresh(row, tag) => {
                let item =
                    R::from_row(&row).map_err(store_error(R::NOT_FOUND, &caller.request_id))?;
                Ok(Conditional::Fresh(item, tag))
            }
            Conditional::NotModified(tag) => Ok(Conditional::NotModified(tag)),
        }
    }

    /// [`Handlers::item_if_changed`]'s row, for a handler that writes the item itself.
    pub(crate) async fn row_if_changed<R: Resource>(
        &self, caller: &Caller, id: String, if_none_match: Option<String>,
    ) -> Result<Conditional<R::Row>, Failure>
    where
        R::Row: Versioned,
    {
        let row = self.row::<R>(caller, id).await?;
        let tag = etag(row.version());
        if not_modified(if_none_match.as_deref(), &tag) {
            return Ok(Conditional::NotModified(tag));
        }
        Ok(Conditional::Fresh(row, tag))
    }

    /// The page of the caller's items that `params` asks for, as `list` reads their rows (for
    /// the organization, on the storage page given), and its pagination block.
    pub(crate) async fn list_page<R: Resource>(
        &self, caller: &Caller, params: &impl Paged,
        list: impl FnOnce(&mut DbConnection, &str, &Page) -> StoreResult<(Vec<R::Row>, i64)>
        + Send
        + 'static,
    ) -> Result<(Vec<R>, Pagination), Failure> {
        self.page_of(caller, params, R::NOT_FOUND, list, R::from_row)
            .await
    }

    /// [`Handlers::list_page`] of any rows (a resource's runs, deliveries, …): `item` shows a
    /// row, `not_found` is the code of what `list` finds missing.
    pub(crate) async fn page_of<Row: Identified + Send + 'static, T>(
        &self, caller: &Caller, params: &impl Paged, not_found: &str,
        list: impl FnOnce(&mut DbConnection, &str, &Page) -> StoreResult<(Vec<Row>, i64)>
        + Send
        + 'static,
        item: impl Fn(&Row) -> Result<T, StoreError>,
    ) -> Result<(Vec<T>, Pagination), Failure> {
        let rid = caller.request_id.as_str();
        let page = PageRequest::of(params, rid)?;
        let (rows, total) = self.rows_on(caller, &page, not_found, list).await?;
        let data = rows
            .iter()
            .map(item)
            .collect::<Result<Vec<_>, _>>()
            .map_err(store_error(not_found, rid))?;
        let last = rows.last().map(Identified::id);
        Ok((data, page.pagination(rows.len(), last, total)))
    }

    /// The caller's rows on `page`, as `list` reads them, and how many there are in all.
    pub(crate) async fn rows_on<Row: Send + 'static>(
        &self, caller: &Caller, page: &PageRequest, not_found: &str,
        list: impl FnOnce(&mut DbConnection, &str, &Page) -> StoreResult<(Vec<Row>, i64)>
        + Send
        + 'static,
    ) -> Result<(Vec<Row>, i64), Failure> {
        let q = page.page();
        // A page within the first COUNT_UP_TO matches is short work (its count stops there,
        // its rows are one page; a filter that few rows match scans more, on an index of the
        // organization): on SQLite it runs inline, like a point read, instead of paying the
        // blocking pool's hand-off, which costs a third as much as the page itself. Tasks
        // queued behind it meanwhile are stolen by the other workers.
        let access = if q.count_limit() <= COUNT_UP_TO {
            Access::Point
        } else {
            Access::Read
        };
        self.for_org(caller, not_found, access, move |conn, org| {
            list(conn, org, &q)
        })
        .await
    }

    /// Creates `row` (written by `insert`, which may first check what the row refers to, in
    /// the same transaction) once per `Idempotency-Key` of the create `params`: a retry with
    /// the key answers the row the first request created; the key with another body is a 409.
    pub(crate) async fn create_row<R: Resource>(
        &self, caller: &Caller, params: &impl Idempotent, row: R::Row,
        insert: impl Fn(&mut DbConnection, &R::Row) -> StoreResult<()> + Send + 'static,
    ) -> Result<R::Row, Failure> {
        let keyed = idem::NewKeyed::of(params, &caller.org_id, row.id());
        let org = caller.org_id.clone();
        idem::create_resource(
            &self.store,
            keyed,
            move |conn| insert(conn, &row).map(|()| row.clone()),
            move |conn, id| R::Row::get(conn, &org, id),
            R::NOT_FOUND,
            &caller.request_id,
        )
        .await
    }

    /// [`Handlers::create_row`] of a plain insert, answered as a create answers: the item, its
    /// `Location` and its ETag.
    pub(crate) async fn create<R: Resource>(
        &self, caller: &Caller, params: &impl Idempotent, row: R::Row,
    ) -> Result<(R, String, String), Failure>
    where
        R::Row: Versioned,
    {
        let row = self
            .create_row::<R>(caller, params, row, R::Row::insert)
            .await?;
        created(params, &row, &caller.request_id)
    }

    /// Replaces the caller's item `id` when `if_match` (if any) names its ETag (else a 412):
    /// `changes` sees the current row under its lock.
    pub(crate) async fn replace<R: Resource>(
        &self, caller: &Caller, id: String, if_match: Option<String>,
        changes: impl FnOnce(&mut DbConnection, &R::Row) -> Changes<R> + Send + 'static,
    ) -> Result<(R, String), Failure>
    where
        R::Row: Versioned,
    {
        let rid = caller.request_id.as_str();
        let row = self
            .run_for(caller, R::NOT_FOUND, move |conn, org| {
                R::Row::update(conn, org, &id, |conn, current| {
                    if let Some(h) = &if_match
                        && !etag_matches(h, &etag(current.version()))
                    {
                        return Err(StoreError::PreconditionFailed);
                    }
                    changes(conn, current)
                })
            })
            .await??;
        let item = R::from_row(&row).map_err(store_error(R::NOT_FOUND, rid))?;
        Ok((item, etag(row.version())))
    }

    /// Deletes the caller's item `id`.
    pub(crate) async fn remove<R: Resource>(
        &self, caller: &Caller, id: String,
    ) -> Result<(), Failure> {
        self.run_for(caller, R::NOT_FOUND, move |conn, org| {
            R::Row::delete(conn, org, &id)
        })
        .await
    }
}

/// The `Location` of the item `id` that the create `params` made.
pub(crate) fn location<P: Idempotent>(_params: &P, id: &str) -> String {
    format!("{}/{id}", P::PATH)
}

/// What a create answers: the item of `row`, its `Location` and its ETag.
pub(crate) fn created<R: Resource>(
    params: &impl Idempotent, row: &R::Row, rid: &str,
) -> Result<(R, String, String), Failure>
where
    R::Row: Versioned,
{
    let item = R::from_row(row).map_err(store_error(R::NOT_FOUND, rid))?;
    Ok((item, location(params, row.id()), etag(row.version())))
}

/// The items of `rows`.
pub(crate) fn items<R: Resource>(rows: &[R::Row], rid: &str) -> Result<Vec<R>, Failure> {
    rows.iter()
        .map(R::from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(store_error(R::NOT_FOUND, rid))
}
