//! The storage every resource table shares, written once: a table whose rows belong to an
//! organization (`org_id`, `id`) gets `insert`, `get` and `delete` from [`resource_table!`],
//! and, when it has a `version` and an `updated_at`, an `update` under a row lock that bumps
//! both. Its rows implement [`Stored`] (and [`Versioned`]), which the handlers' one CRUD shape
//! is generic over; [`stored_table!`] gives a module's second such table [`Stored`] alone.
//! A table whose rows also belong to a parent row (a knowledge base's sources, a twin's
//! simulations, a webhook's deliveries) is a [`child_table!`]: its rows implement [`Child`].
//! Lists page newest first through [`newest_first!`].

use super::sql::Page;
use super::{DbConnection, Found, StoreError, StoreResult};

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
        conn: &mut DbConnection, org_id: &str, id: &str,
        change: impl FnOnce(&mut DbConnection, &Self) -> StoreResult<Result<Self::Changes, E>>,
    ) -> StoreResult<Result<Self, E>>;
}

/// A row of a child table: one item of one organization under one parent row (a knowledge
/// base's sources, documents and syncs; a twin's simulations), which [`child_table!`] stamps.
pub trait Child: Identified + Sized + Clone + Send + 'static {
    /// Inserts a new row.
    fn insert(conn: &mut DbConnection, row: &Self) -> StoreResult<()>;
    /// The organization's row `id` under `parent_id` ([`StoreError::NotFound`] otherwise).
    fn get(conn: &mut DbConnection, org_id: &str, parent_id: &str, id: &str) -> StoreResult<Self>;
    /// Deletes the organization's row `id` under `parent_id` ([`StoreError::NotFound`] when
    /// none was).
    fn delete(conn: &mut DbConnection, org_id: &str, parent_id: &str, id: &str) -> StoreResult<()>;
    /// The row `id`, whichever organization's (what a background job holds).
    fn by_id(conn: &mut DbConnection, id: &str) -> StoreResult<Self>;
}

/// `page`, except that a cursor naming no stored row (a deleted one, or an item no row holds)
/// pages by its offset instead.
pub fn stored_cursor<R: Stored>(
    conn: &mut DbConnection, org_id: &str, page: &Page,
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
/// `versioned $changes`, also `update`, [`Versioned`] and [`versioned_row!`]'s `new`.
macro_rules! resource_table {
    ($table:ident, $row:ty) => {
        $crate::db::crud::stored_table!($table, $row);

        /// Inserts a new row.
        pub fn insert(
            conn: &mut $crate::db::DbConnection, row: &$row,
        ) -> $crate::db::StoreResult<()> {
            <$row as $crate::db::crud::Stored>::insert(conn, row)
        }

        /// The organization's row `id`.
        pub fn get(
            conn: &mut $crate::db::DbConnection, org_id: &str, id: &str,
        ) -> $crate::db::StoreResult<$row> {
            <$row as $crate::db::crud::Stored>::get(conn, org_id, id)
        }

        /// Deletes the organization's row `id`; `NotFound` when there was none.
        pub fn delete(
            conn: &mut $crate::db::DbConnection, org_id: &str, id: &str,
        ) -> $crate::db::StoreResult<()> {
            <$row as $crate::db::crud::Stored>::delete(conn, org_id, id)
        }
    };
    ($table:ident, $row:ident, versioned $changes:ty $(, $extra:ident = $default:expr)*) => {
        $crate::db::crud::resource_table!($table, $row);
        $crate::db::crud::versioned_row!($row, $changes $(, $extra = $default)*);

        /// Updates the organization's row `id` under a row lock, bumping its `version` and
        /// `updated_at`: `change` sees the current row and may refuse, writing nothing.
        pub fn update<E>(
            conn: &mut $crate::db::DbConnection, org_id: &str, id: &str,
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
                conn: &mut $crate::db::DbConnection, org_id: &str, id: &str,
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

/// `$row::new`, the first version of a versioned row whose content (the columns an update
/// writes) is `$changes`: it has the fields `id`, `org_id`, `content` (embedded), `version`,
/// `created_at` and `updated_at`, and any `$extra` field starts as `$default`.
macro_rules! versioned_row {
    ($row:ident, $changes:ty $(, $extra:ident = $default:expr)*) => {
        impl $row {
            /// Version 1, created now, of the organization's row `id` with `content`.
            pub fn new(org_id: &str, id: String, content: $changes) -> Self {
                let now = $crate::ids::now();
                $row {
                    id,
                    org_id: org_id.to_string(),
                    content,
                    $($extra: $default,)*
                    version: 1,
                    created_at: now.clone(),
                    updated_at: now,
                }
            }
        }
    };
}

/// [`Stored`] (and [`Identified`]) for the rows `$row` of the table `$table` (a module of
/// [`super::schema`]), without the module functions of [`resource_table!`]: for a second
/// table of one module (a vault's tokens beside its credentials).
macro_rules! stored_table {
    ($table:ident, $row:ty) => {
        $crate::db::crud::identified!($row);

        impl $crate::db::crud::Stored for $row {
            $crate::db::crud::one_row!($table, $row, org_id = org_id, id = id);
        }
    };
}

/// [`Child`] (and [`Identified`]) for the rows `$row` of the table `$table` (a module of
/// [`super::schema`]), which belong to an organization and to the row of another table that
/// `$parent` (a column of `$table`) names: a knowledge base's sources, a twin's simulations.
macro_rules! child_table {
    ($table:ident, $parent:ident, $row:ty) => {
        $crate::db::crud::identified!($row);

        impl $crate::db::crud::Child for $row {
            $crate::db::crud::one_row!($table, $row, org_id = org_id, $parent = parent_id, id = id);

            fn by_id(
                conn: &mut $crate::db::DbConnection, id: &str,
            ) -> $crate::db::StoreResult<Self> {
                use diesel::prelude::*;
                use $crate::db::schema::$table as t;
                Ok(t::table
                    .filter(t::id.eq(id))
                    .select(<$row>::as_select())
                    .first(conn)?)
            }
        }

        impl $row {
            /// The organization's rows under `parent_id`, as a query to narrow and page.
            pub fn under<'a>(
                org_id: &'a str, parent_id: &'a str,
            ) -> $crate::db::schema::$table::BoxedQuery<'a, $crate::db::MultiBackend> {
                use diesel::prelude::*;
                use $crate::db::schema::$table as t;
                t::table
                    .filter(t::org_id.eq(org_id))
                    .filter(t::$parent.eq(parent_id))
                    .into_boxed()
            }
        }
    };
}

/// `insert`, and the `get` and `delete` of the one row whose columns `$column` equal the
/// arguments `$arg`, of the table `$table` whose rows are `$row`: the methods [`Stored`] and
/// [`Child`] share.
macro_rules! one_row {
    ($table:ident, $row:ty, $($column:ident = $arg:ident),+) => {
        fn insert(
            conn: &mut $crate::db::DbConnection,
            row: &Self,
        ) -> $crate::db::StoreResult<()> {
            use diesel::prelude::*;
            diesel::insert_into($crate::db::schema::$table::table)
                .values(row)
                .execute(conn)?;
            Ok(())
        }
        fn get(
            conn: &mut $crate::db::DbConnection,
            $($arg: &str),+
        ) -> $crate::db::StoreResult<Self> {
            use diesel::prelude::*;
            use $crate::db::schema::$table as t;
            let query = t::table $(.filter(t::$column.eq($arg)))+;
            // On the backend's own connection: diesel finds the prepared statement by the
            // query's type there, where through `MultiConnection` it renders the SQL again on
            // every call to look it up (a fifth of a `GET`).
            Ok(match conn {
                $crate::db::DbConnection::Sqlite(c) => query.select(<$row>::as_select()).first(c)?,
                $crate::db::DbConnection::Postgres(c) => query.select(<$row>::as_select()).first(c)?,
            })
        }
        fn delete(
            conn: &mut $crate::db::DbConnection,
            $($arg: &str),+
        ) -> $crate::db::StoreResult<()> {
            use diesel::prelude::*;
            use $crate::db::schema::$table as t;
            let rows = t::table $(.filter(t::$column.eq($arg)))+;
            $crate::db::crud::deleted(diesel::delete(rows).execute(conn)?)
        }
    };
}

/// What a delete of one row answers, from the number of rows it deleted: `NotFound` for none.
pub fn deleted(rows: usize) -> StoreResult<()> {
    if rows == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
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
/// `StoreResult<(Vec<$row>, i64)>`. With `by created_at`, newest by `created_at` (then id),
/// the rows after the cursor's row while the list holds it, else from the page's offset.
macro_rules! newest_first {
    ($conn:expr, $table:ident, $row:ty, $filtered:expr, $page:expr) => {
        $crate::db::crud::newest_first!(@by $conn, $table, $row, $filtered, $page, false)
    };
    ($conn:expr, $table:ident, $row:ty, $filtered:expr, $page:expr, by created_at) => {
        $crate::db::crud::newest_first!(@by $conn, $table, $row, $filtered, $page, true)
    };
    (@by $conn:expr, $table:ident, $row:ty, $filtered:expr, $page:expr, $by_created:expr) => {{
        fn newest_first<'a>(
            conn: &mut $crate::db::DbConnection,
            filtered: impl Fn() -> $table::BoxedQuery<'a, $crate::db::MultiBackend>,
            page: &$crate::db::sql::Page,
            by_created: bool,
        ) -> $crate::db::StoreResult<(Vec<$row>, i64)> {
            use diesel::prelude::*;
            // The cursor's id, and by creation time where its row stands while the list holds it.
            let after: Option<(Option<String>, String)> = match &page.after_id {
                Some(id) if by_created => filtered()
                    .filter($table::id.eq(id.clone()))
                    .select(($table::created_at, $table::id))
                    .first::<(String, String)>(conn)
                    .optional()?
                    .map(|(at, id)| (Some(at), id)),
                Some(id) => Some((None, id.clone())),
                None => None,
            };
            let mut q = filtered().limit(page.limit);
            q = match after {
                Some((Some(at), id)) => {
                    let same_time = $table::created_at.eq(at.clone()).and($table::id.lt(id));
                    q.filter($table::created_at.lt(at).or(same_time))
                }
                Some((None, id)) => q.filter($table::id.lt(id)),
                None => q.offset(page.offset),
            };
            q = match by_created {
                true => q.order(($table::created_at.desc(), $table::id.desc())),
                false => q.order($table::id.desc()),
            };
            let rows: Vec<$row> = q.select(<$row>::as_select()).load(conn)?;
            let total = page.total(rows.len(), || {
                let counted = filtered().select($table::id).limit(page.count_limit());
                $crate::db::sql::CountOf(counted).get_result::<i64>(conn)
            })?;
            Ok((rows, total))
        }
        newest_first($conn, $filtered, $page, $by_created)
    }};
}

/// `list`: the page `page` of the organization's rows `$row` of `$table` (a table module in
/// scope), of one `$column` value when one is given, newest first ([`newest_first!`], by
/// `created_at` with `by created_at`), and how many match.
macro_rules! list_by {
    ($table:ident, $row:ty, $column:ident $(, by $created_at:ident)?) => {
        /// A page of the organization's rows (of one value of the column named as the
        /// parameter, if given), newest first, and how many match.
        pub fn list(
            conn: &mut $crate::db::DbConnection, org_id: &str, $column: Option<&str>,
            page: &$crate::db::sql::Page,
        ) -> $crate::db::StoreResult<(Vec<$row>, i64)> {
            use diesel::prelude::*;
            use $crate::db::sql::FilterIf;
            let filtered = || {
                let q = $table::table.filter($table::org_id.eq(org_id)).into_boxed();
                q.filter_if($column.map(|value| $table::$column.eq(value)))
            };
            $crate::db::crud::newest_first!(conn, $table, $row, filtered, page $(, by $created_at)?)
        }
    };
}

/// The rows `$row` that the boxed query `$rows` (of `$table`, a table module in scope) selects
/// created at or after `$from`, oldest first (by `created_at`, then id), at most `$limit`:
/// what a tail polls for. Evaluates to a `StoreResult<Vec<$row>>`.
macro_rules! oldest_from {
    ($conn:expr, $table:ident, $row:ty, $rows:expr, $from:expr, $limit:expr) => {{
        use diesel::prelude::*;
        $rows
            .filter($table::created_at.ge($from))
            .order(($table::created_at.asc(), $table::id.asc()))
            .limit($limit)
            .select(<$row>::as_select())
            .load($conn)
            .map_err($crate::db::StoreError::from)
    }};
}

/// `pub fn $name(conn, row)`: inserts `row` into `$table` (a table module in scope), for a
/// table of rows `$row` that are written once and read by queries of their own (logs, usage
/// records, idempotency keys).
macro_rules! inserts {
    ($(#[$doc:meta])* $name:ident, $table:ident, $row:ty) => {
        $(#[$doc])*
        pub fn $name(
            conn: &mut $crate::db::DbConnection, row: &$row,
        ) -> $crate::db::StoreResult<()> {
            use diesel::prelude::*;
            diesel::insert_into($table::table).values(row).execute(conn)?;
            Ok(())
        }
    };
}

pub(crate) use {
    child_table, identified, inserts, list_by, newest_first, oldest_from, one_row, resource_table,
    stored_table, versioned_row,
};
