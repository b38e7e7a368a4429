//! Evaluation and evaluation-run rows.

use diesel::prelude::*;

use super::crud::Child;
use super::schema::{evaluation_runs as r, evaluations as t};
use super::sql::Page;
use super::{DbConnection, StoreResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = t)]
pub struct EvaluationRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub target_id: String,
    /// JSON: description, type, test_cases, pass_criteria.
    pub body: String,
    pub latest_run_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = r)]
pub struct RunRow {
    pub id: String,
    pub org_id: String,
    pub evaluation_id: String,
    pub status: String,
    /// JSON aggregates, once completed.
    pub summary: Option<String>,
    /// JSON array of case results.
    pub results: String,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

super::crud::resource_table!(evaluations, EvaluationRow);
super::crud::child_table!(evaluation_runs, evaluation_id, RunRow);

super::crud::list_by!(t, EvaluationRow, target_id);

/// Queues a run and records it as the evaluation's latest (inside the caller's transaction,
/// which also queues its job).
pub fn insert_run(conn: &mut DbConnection, row: &RunRow) -> StoreResult<()> {
    RunRow::insert(conn, row)?;
    diesel::update(t::table.filter(t::id.eq(&row.evaluation_id)))
        .set((
            t::latest_run_id.eq(&row.id),
            t::updated_at.eq(&row.created_at),
        ))
        .execute(conn)?;
    Ok(())
}

/// A run by id, whichever organization's (what its job holds).
pub fn run_by_id(conn: &mut DbConnection, id: &str) -> StoreResult<RunRow> {
    RunRow::by_id(conn, id)
}

/// A page of an evaluation's runs, newest first, and how many it has.
pub fn list_runs(
    conn: &mut DbConnection, org_id: &str, evaluation_id: &str, page: &Page,
) -> StoreResult<(Vec<RunRow>, i64)> {
    let filtered = || RunRow::under(org_id, evaluation_id);
    super::crud::newest_first!(conn, r, RunRow, filtered, page)
}

/// Marks a queued run running.
pub fn start_run(conn: &mut DbConnection, run_id: &str, at: &str) -> StoreResult<()> {
    diesel::update(r::table.filter(r::id.eq(run_id)))
        .set((r::status.eq("running"), r::started_at.eq(Some(at))))
        .execute(conn)?;
    Ok(())
}

/// Records how a run ended.
pub fn finish_run(
    conn: &mut DbConnection, run_id: &str, status: &str, summary: Option<&str>, results: &str,
    error: Option<&str>, at: &str,
) -> StoreResult<()> {
    diesel::update(r::table.filter(r::id.eq(run_id)))
        .set((
            r::status.eq(status),
            r::summary.eq(summary),
            r::results.eq(results),
            r::error.eq(error),
            r::finished_at.eq(Some(at)),
        ))
        .execute(conn)?;
    Ok(())
}
