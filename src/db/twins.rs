//! Digital twin and simulation rows. A twin's data-source connection strings are sealed
//! ([`crate::crypto`]) together in `secrets` (empty when there are none), apart from `body`,
//! which every read returns.

use diesel::prelude::*;

use super::schema::{simulations as s, twins as t};
use super::sql::Page;
use super::{DbConnection, StoreError, StoreResult};

/// One row of `twins`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = t)]
pub struct TwinRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub twin_type: String,
    pub description: Option<String>,
    /// JSON: data_sources (without connection strings), update_frequency, simulation_models, state.
    pub body: String,
    /// Sealed JSON array of the data sources' connection strings (null where none), or empty.
    pub secrets: String,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns a replace writes.
#[derive(Debug, Clone, AsChangeset)]
#[diesel(table_name = t, treat_none_as_null = true)]
pub struct TwinChanges {
    pub name: String,
    pub twin_type: String,
    pub description: Option<String>,
    pub body: String,
    pub secrets: String,
}

/// One row of `simulations`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = s)]
pub struct SimulationRow {
    pub id: String,
    pub org_id: String,
    pub twin_id: String,
    pub scenario: String,
    pub model: String,
    pub status: String,
    /// JSON: the parameters as sent.
    pub parameters: String,
    pub seed: i64,
    pub runs: i64,
    pub run_async: i64,
    pub notification_webhook: Option<String>,
    /// JSON: the spec's `SimulationResults`.
    pub results: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

pub fn insert(conn: &mut DbConnection, row: &TwinRow) -> StoreResult<()> {
    diesel::insert_into(t::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<TwinRow> {
    t::table
        .filter(t::org_id.eq(org_id))
        .filter(t::id.eq(id))
        .select(TwinRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

fn filtered<'a>(
    org_id: &'a str,
    twin_type: Option<&'a str>,
) -> t::BoxedQuery<'a, super::MultiBackend> {
    let mut q = t::table.filter(t::org_id.eq(org_id)).into_boxed();
    if let Some(ty) = twin_type {
        q = q.filter(t::twin_type.eq(ty));
    }
    q
}

/// A page of twins, newest first, and the number matching.
pub fn list(
    conn: &mut DbConnection,
    org_id: &str,
    twin_type: Option<&str>,
    page: &Page,
) -> StoreResult<(Vec<TwinRow>, i64)> {
    let total: i64 = filtered(org_id, twin_type).count().get_result(conn)?;
    let mut q = filtered(org_id, twin_type)
        .order(t::id.desc())
        .limit(page.limit);
    match &page.after_id {
        Some(id) => q = q.filter(t::id.lt(id.clone())),
        None if page.offset > 0 => q = q.offset(page.offset),
        None => {}
    }
    let rows = q.select(TwinRow::as_select()).load(conn)?;
    Ok((rows, total))
}

/// Replaces a twin under a row lock; `change` sees the current row (for `If-Match` and to
/// keep stored connection strings).
pub fn update(
    conn: &mut DbConnection,
    org_id: &str,
    id: &str,
    change: impl FnOnce(&TwinRow) -> StoreResult<TwinChanges>,
) -> StoreResult<TwinRow> {
    super::write_transaction(conn, |conn| {
        super::lock_row(conn, "twins", org_id, id)?;
        let current = get(conn, org_id, id)?;
        let changes = change(&current)?;
        diesel::update(t::table.filter(t::org_id.eq(org_id)).filter(t::id.eq(id)))
            .set((
                &changes,
                t::version.eq(current.version + 1),
                t::updated_at.eq(crate::ids::now()),
            ))
            .execute(conn)?;
        get(conn, org_id, id)
    })
}

/// Deletes a twin and its simulations.
pub fn delete(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<()> {
    super::write_transaction(conn, |conn| {
        get(conn, org_id, id)?;
        diesel::delete(s::table.filter(s::twin_id.eq(id))).execute(conn)?;
        diesel::delete(t::table.filter(t::org_id.eq(org_id)).filter(t::id.eq(id))).execute(conn)?;
        Ok(())
    })
}

// Simulations.

pub fn insert_simulation(conn: &mut DbConnection, row: &SimulationRow) -> StoreResult<()> {
    diesel::insert_into(s::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get_simulation(
    conn: &mut DbConnection,
    org_id: &str,
    twin_id: &str,
    id: &str,
) -> StoreResult<SimulationRow> {
    s::table
        .filter(s::org_id.eq(org_id))
        .filter(s::twin_id.eq(twin_id))
        .filter(s::id.eq(id))
        .select(SimulationRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

fn twin_simulations<'a>(
    org_id: &'a str,
    twin_id: &'a str,
    status: Option<&'a str>,
) -> s::BoxedQuery<'a, super::MultiBackend> {
    let mut q = s::table
        .filter(s::org_id.eq(org_id))
        .filter(s::twin_id.eq(twin_id))
        .into_boxed();
    if let Some(st) = status {
        q = q.filter(s::status.eq(st));
    }
    q
}

/// A page of a twin's simulations, newest first, and the number matching; 404 without the twin.
pub fn list_simulations(
    conn: &mut DbConnection,
    org_id: &str,
    twin_id: &str,
    status: Option<&str>,
    page: &Page,
) -> StoreResult<(Vec<SimulationRow>, i64)> {
    get(conn, org_id, twin_id)?;
    let total: i64 = twin_simulations(org_id, twin_id, status)
        .count()
        .get_result(conn)?;
    let mut q = twin_simulations(org_id, twin_id, status)
        .order(s::id.desc())
        .limit(page.limit);
    match &page.after_id {
        Some(id) => q = q.filter(s::id.lt(id.clone())),
        None if page.offset > 0 => q = q.offset(page.offset),
        None => {}
    }
    let rows = q.select(SimulationRow::as_select()).load(conn)?;
    Ok((rows, total))
}

/// Marks a queued simulation running.
pub fn start_simulation(conn: &mut DbConnection, id: &str, at: &str) -> StoreResult<()> {
    diesel::update(s::table.filter(s::id.eq(id)).filter(s::status.eq("queued")))
        .set((s::status.eq("running"), s::started_at.eq(at)))
        .execute(conn)?;
    Ok(())
}

/// Records how a simulation ended: results, or an error.
pub fn finish_simulation(
    conn: &mut DbConnection,
    id: &str,
    outcome: Result<String, String>,
    at: &str,
) -> StoreResult<SimulationRow> {
    let (status, results, error) = match outcome {
        Ok(r) => ("completed", Some(r), None),
        Err(e) => ("failed", None, Some(e)),
    };
    diesel::update(s::table.filter(s::id.eq(id)))
        .set((
            s::status.eq(status),
            s::results.eq(results),
            s::error.eq(error),
            s::finished_at.eq(at),
        ))
        .execute(conn)?;
    s::table
        .filter(s::id.eq(id))
        .select(SimulationRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

/// A simulation by id, whichever organization's (what its job holds).
pub fn simulation_by_id(conn: &mut DbConnection, id: &str) -> StoreResult<SimulationRow> {
    s::table
        .filter(s::id.eq(id))
        .select(SimulationRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}
