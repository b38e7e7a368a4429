//! Digital twin and simulation rows. A twin's data-source connection strings are sealed
//! ([`crate::crypto`]) together in `secrets` (empty when there are none), apart from `body`,
//! which every read returns.

use diesel::prelude::*;

use super::crud::Child;
use super::schema::{simulations as s, twins as t};
use super::sql::{FilterIf, Page};
use super::{DbConnection, StoreResult};

/// One row of `twins`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = t)]
pub struct TwinRow {
    pub id: String,
    pub org_id: String,
    /// The columns an update writes.
    #[diesel(embed)]
    pub content: TwinChanges,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns a replace writes.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, treat_none_as_null = true)]
pub struct TwinChanges {
    pub name: String,
    pub twin_type: String,
    pub description: Option<String>,
    /// JSON: data_sources (without connection strings), update_frequency, simulation_models, state.
    pub body: String,
    /// Sealed JSON array of the data sources' connection strings (null where none), or empty.
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

// Deleting a twin deletes its simulations (`ON DELETE CASCADE`).
super::crud::resource_table!(twins, TwinRow, versioned TwinChanges);
super::crud::child_table!(simulations, twin_id, SimulationRow);

super::crud::list_by!(t, TwinRow, twin_type);

// Simulations.

/// Inserts a new simulation.
pub fn insert_simulation(conn: &mut DbConnection, row: &SimulationRow) -> StoreResult<()> {
    SimulationRow::insert(conn, row)
}

/// A page of a twin's simulations, newest first, and the number matching; 404 without the twin.
pub fn list_simulations(
    conn: &mut DbConnection, org_id: &str, twin_id: &str, status: Option<&str>, page: &Page,
) -> StoreResult<(Vec<SimulationRow>, i64)> {
    get(conn, org_id, twin_id)?;
    let filtered =
        || SimulationRow::under(org_id, twin_id).filter_if(status.map(|st| s::status.eq(st)));
    super::crud::newest_first!(conn, s, SimulationRow, filtered, page)
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
    conn: &mut DbConnection, id: &str, outcome: Result<String, String>, at: &str,
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
    simulation_by_id(conn, id)
}

/// A simulation by id, whichever organization's (what its job holds).
pub fn simulation_by_id(conn: &mut DbConnection, id: &str) -> StoreResult<SimulationRow> {
    SimulationRow::by_id(conn, id)
}
