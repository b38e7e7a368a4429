//! The storage every resource table shares, written once: a table whose rows belong to an
//! organization (`org_id`, `id`) gets `insert`, `get` and `delete` from [`resource_table!`],
//! and, when it has a `version` and an `updated_at`, an `update` under a row lock that bumps
//! both. Its rows implement [`Stored`] (and [`Versioned`]), which the handlers' one CRUD shape
//! is generic over. Lists page newest first through [`newest_first!`].

use super::sql::Page;
use super::{DbConnection, Found, StoreResult};

/// A row with an id: what a page of a list needs to hand out its cursor.
pub trait Identified {
    fn id(&self) -> &str;
}

/// A row of a resource table: one item of one organization.
pub trait Stored: Identified + Sized + Clone + Send + 'static {
    /// Inserts a new row.
    fn insert(conn: &mut DbConnection, row: &Self) -> StoreResult<()>;
    /// The organization's row `id` ([`super::StoreError::NotFound`] for another's).
    fn get(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<Self>;
    /// Deletes the organization's row `id` ([`super::StoreError::NotFound`] when none was).
    fn delete(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<()>;
}

/// A row whose `version` each update bumps: its ETag.
pub trait Versioned: Stored {
    /// The columns an update writes.
    type Changes;
    fn version(&self) -> i64;
    /// Updates the row under a row lock: `change` sees the current row (for `If-Match`, and to
    /// keep what the request leaves out) and may refuse with an `E`, which writes nothing.
    fn update<E>(
        conn: &mut DbConnection,
        org_id: &str,
        id: &str,
        change: impl FnOnce(&mut DbConnection, &Self) -> StoreResult<Result<Self::Changes, E>>,
    ) -> StoreResult<Result<Self, E>>;
}

/// `page`, except that a cursor naming no stored row (a deleted one, or an item no row holds)
/// pages by its offset instead.
pub fn stored_cursor<R: Stored>(
    conn: &mut DbConnection,
    org_id: &str,
    page: &Page,
) -> StoreResult<Page> {
    let after_id = match &page.after_id {
        Some(id) => R::get(conn, org_id, id)
            .found()?
            .map(|row| row.id().to_string()),
        None => None,
    };
    Ok(Page {
        after_id,
        ..page.clone()
    })
}

/// Stamps out the storage of the resource table `$table` (a module of [`super::schema`]) whose
/// rows are `$row`: `insert`, `get` and `delete`, and [`Stored`] for `$row`; with
/// `versioned $changes`, also `update` and [`Versioned`].
macro_rules! resource_table {
    ($table:ident, $row:ty) => {
        /// Inserts a new row.
        pub fn insert(
            conn: &mut $crate::db::DbConnection,
            row: &$row,
        ) -> $crate::db::StoreResult<()> {
            use diesel::prelude::*;
            diesel::insert_into($crate::db::schema::$table::table)
                .values(row)
                .execute(conn)?;
            Ok(())
        }

        /// The organization's row `id`.
        pub fn get(
            conn: &mut $crate::db::DbConnection,
            org_id: &str,
            id: &str,
        ) -> $crate::db::StoreResult<$row> {
            use diesel::prelude::*;
            use $crate::db::schema::$table as t;
            Ok(t::table
                .filter(t::org_id.eq(org_id))
                .filter(t::id.eq(id))
                .select(<$row>::as_select())
                .first(conn)?)
        }

        /// Deletes the organization's row `id`; `NotFound` when there was none.
        pub fn delete(
            conn: &mut $crate::db::DbConnection,
            org_id: &str,
            id: &str,
        ) -> $crate::db::StoreResult<()> {
            use diesel::prelude::*;
            use $crate::db::schema::$table as t;
            let n = diesel::delete(t::table.filter(t::org_id.eq(org_id)).filter(t::id.eq(id)))
                .execute(conn)?;
            if n == 0 {
                return Err($crate::db::StoreError::NotFound);
            }
            Ok(())
        }

        $crate::db::crud::identified!($row);

        impl $crate::db::crud::Stored for $row {
            fn insert(
                conn: &mut $crate::db::DbConnection,
                row: &Self,
            ) -> $crate::db::StoreResult<()> {
                insert(conn, row)
            }
            fn get(
                conn: &mut $crate::db::DbConnection,
                org_id: &str,
                id: &str,
            ) -> $crate::db::StoreResult<Self> {
                get(conn, org_id, id)
            }
            fn delete(
                conn: &mut $crate::db::DbConnection,
                org_id: &str,
                id: &str,
            ) -> $crate::db::StoreResult<()> {
                delete(conn, org_id, id)
            }
        }
    };
    ($table:ident, $row:ty, versioned $changes:ty) => {
        $crate::db::crud::resource_table!($table, $row);

        /// Updates the organization's row `id` under a row lock, bumping its `version` and
        /// `updated_at`: `change` sees the current row and may refuse, writing nothing.
        pub fn update<E>(
            conn: &mut $crate::db::DbConnection,
            org_id: &str,
            id: &str,
            change: impl FnOnce(
                &mut $crate::db::DbConnection,
                &$row,
            ) -> $crate::db::StoreResult<Result<$changes, E>>,
        ) -> $crate::db::StoreResult<Result<$row, E>> {
            use diesel::prelude::*;
            use $crate::db::schema::$table as t;
            $crate::db::write_transaction(conn, |conn| {
                $crate::db::lock_row(conn, stringify!($table), org_id, id)?;
                let current = get(conn, org_id, id)?;
                let changes = match change(conn, &current)? {
                    Ok(changes) => changes,
                    Err(refused) => return Ok(Err(refused)),
                };
                diesel::update(t::table.filter(t::org_id.eq(org_id)).filter(t::id.eq(id)))
                    .set((
                        &changes,
                        t::version.eq(current.version + 1),
                        t::updated_at.eq($crate::ids::now()),
                    ))
                    .execute(conn)?;
                get(conn, org_id, id).map(Ok)
            })
        }

        impl $crate::db::crud::Versioned for $row {
            type Changes = $changes;
            fn version(&self) -> i64 {
                self.version
            }
            fn update<E>(
                conn: &mut $crate::db::DbConnection,
                org_id: &str,
                id: &str,
                change: impl FnOnce(
                    &mut $crate::db::DbConnection,
                    &Self,
                ) -> $crate::db::StoreResult<Result<$changes, E>>,
            ) -> $crate::db::StoreResult<Result<Self, E>> {
                update(conn, org_id, id, change)
            }
        }
    };
}

/// Implements [`Identified`] for rows with an `id` field.
macro_rules! identified {
    ($($row:ty),+) => {
        $(impl $crate::db::crud::Identified for $row {
            fn id(&self) -> &str {
                &self.id
            }
        })+
    };
}

/// The page `$page` of the rows of `$table` (a table module in scope) that the boxed query
/// `$filtered()` selects, newest first (ids sort by creation time), and how many it selects:
/// the rows after the page's cursor id, else from its offset. Evaluates to a
/// `StoreResult<(Vec<$row>, i64)>`.
macro_rules! newest_first {
    ($conn:expr, $table:ident, $row:ty, $filtered:expr, $page:expr) => {{
        fn newest_first<'a>(
            conn: &mut $crate::db::DbConnection,
            filtered: impl Fn() -> $table::BoxedQuery<'a, $crate::db::MultiBackend>,
            page: &$crate::db::sql::Page,
        ) -> $crate::db::StoreResult<(Vec<$row>, i64)> {
            use diesel::prelude::*;
            let total: i64 = filtered().count().get_result(conn)?;
            let mut q = filtered().order($table::id.desc()).limit(page.limit);
            match &page.after_id {
                Some(id) => q = q.filter($table::id.lt(id.clone())),
                None if page.offset > 0 => q = q.offset(page.offset),
                None => {}
            }
            Ok((q.select(<$row>::as_select()).load(conn)?, total))
        }
        newest_first($conn, $filtered, $page)
    }};
}

pub(crate) use {identified, newest_first, resource_table};
