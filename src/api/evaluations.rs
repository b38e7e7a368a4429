//! The evaluations resource (Magnet AI): datasets of cases run through an agent, runs kept.

use agentplane_api::Json;
use agentplane_api::Reply;
use agentplane_api::evaluations::*;
use agentplane_api::models::{
    CaseResult, Evaluation, EvaluationInput, EvaluationList, EvaluationMetric, EvaluationRun,
    EvaluationRunList, EvaluationRunStatus, EvaluationSummary, EvaluationType, LatencyPercentiles,
    PassCriteria, TestCase, TokenCounts,
};
use serde_json::{Value, json};

use super::Handlers;
use super::resource::{Resource, location};
use crate::auth::Caller;
use crate::db::evaluations::{self as store, EvaluationRow, RunRow};
use crate::db::sql::Page;
use crate::db::{DbConnection, StoreError};
use crate::error::{Failure, Kind, detail, store_error};
use crate::evaluation::{self as eval, Criteria, Metric, stored};

const RUN_NOT_FOUND: &str = "EVALUATION_RUN_NOT_FOUND";

fn metric_of(m: EvaluationMetric) -> Metric {
    match m {
        EvaluationMetric::ExactMatch => Metric::ExactMatch,
        EvaluationMetric::Contains => Metric::Contains,
        EvaluationMetric::TokenF1 => Metric::TokenF1,
    }
}

fn metric_model(m: Metric) -> EvaluationMetric {
    match m {
        Metric::ExactMatch => EvaluationMetric::ExactMatch,
        Metric::Contains => EvaluationMetric::Contains,
        Metric::TokenF1 => EvaluationMetric::TokenF1,
    }
}

/// What the `body` column keeps.
fn body_of(input: &EvaluationInput) -> Value {
    let criteria = input
        .pass_criteria
        .as_ref()
        .map_or(Criteria::new(Metric::Contains, None), |c| {
            Criteria::new(metric_of(c.metric), c.threshold)
        });
    json!({
        "description": input.description,
        "test_cases": input.test_cases.iter().map(|c| json!({
            "input": c.input,
            "expected_output": c.expected_output.clone().unwrap_or_default(),
            "metadata": c.metadata.clone().unwrap_or_else(|| json!({})),
        })).collect::<Vec<_>>(),
        "criteria": criteria,
    })
}

impl Resource for Evaluation {
    type Row = EvaluationRow;
    const NOT_FOUND: &'static str = "EVALUATION_NOT_FOUND";

    fn from_row(row: &EvaluationRow) -> Result<Evaluation, StoreError> {
        let s = stored(row)?;
        Ok(Evaluation {
            id: row.id.clone(),
            name: row.name.clone(),
            description: s.description,
            type_: EvaluationType::Agent,
            target_id: row.target_id.clone(),
            test_cases: s
                .cases
                .into_iter()
                .map(|c| TestCase {
                    input: c.input,
                    expected_output: Some(c.expected_output),
                    metadata: Some(Value::Object(c.metadata)),
                })
                .collect(),
            pass_criteria: PassCriteria {
                metric: metric_model(s.criteria.metric),
                threshold: Some(s.criteria.threshold),
            },
            latest_run_id: row.latest_run_id.clone(),
            created_at: row.created_at.clone(),
            updated_at: row.updated_at.clone(),
        })
    }
}

impl From<eval::Percentiles> for LatencyPercentiles {
    fn from(p: eval::Percentiles) -> LatencyPercentiles {
        LatencyPercentiles {
            p50: p.p50,
            p95: p.p95,
            p99: p.p99,
        }
    }
}

impl From<eval::Tokens> for TokenCounts {
    fn from(t: eval::Tokens) -> TokenCounts {
        TokenCounts {
            input: t.input,
            output: t.output,
        }
    }
}

/// A run as the API shows it; `with_results` false leaves the per-case list empty (lists).
fn row_to_run(row: &RunRow, with_results: bool) -> Result<EvaluationRun, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("run {}: {e}", row.id));
    let summary = match &row.summary {
        None => None,
        Some(text) => {
            let s: eval::Summary = serde_json::from_str(text).map_err(corrupt)?;
            Some(EvaluationSummary {
                cases: s.cases,
                passed: s.passed,
                failed: s.failed,
                errors: s.errors,
                pass_rate: s.pass_rate,
                exact_match_rate: s.exact_match_rate,
                contains_rate: s.contains_rate,
                mean_token_f1: s.mean_token_f1,
                latency_ms: s.latency_ms.into(),
                tokens: s.tokens.into(),
                cost_usd: s.cost_usd,
            })
        }
    };
    let results = if with_results {
        let results: Vec<eval::CaseResult> = serde_json::from_str(&row.results).map_err(corrupt)?;
        results
            .into_iter()
            .map(|r| CaseResult {
                index: r.index,
                input: r.input,
                expected_output: r.expected_output,
                output: r.output,
                passed: r.passed,
                exact_match: r.exact_match,
                contains: r.contains,
                token_f1: r.token_f1,
                latency_ms: r.latency_ms,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost_usd: r.cost_usd,
                execution_id: r.execution_id,
                error: r.error,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(EvaluationRun {
        id: row.id.clone(),
        evaluation_id: row.evaluation_id.clone(),
        status: EvaluationRunStatus::from_wire(&row.status)
            .ok_or_else(|| StoreError::Corrupt(format!("run {}: status {}", row.id, row.status)))?,
        summary,
        results,
        error: row.error.clone(),
        created_at: row.created_at.clone(),
        started_at: row.started_at.clone(),
        finished_at: row.finished_at.clone(),
    })
}

impl Handlers {
    /// The evaluated agent must be the caller's; another organization's is as unknown (422).
    async fn check_evaluation_target(
        &self, caller: &Caller, target_id: String,
    ) -> Result<(), Failure> {
        let rid = caller.request_id.as_str();
        let org = caller.org_id.clone();
        match self
            .store
            .run(move |conn| crate::db::agents::get(conn, &org, &target_id))
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound) => Err(Failure::with_details(
                Kind::Unprocessable,
                "UNKNOWN_AGENT",
                "`target_id` names no agent of the organization",
                vec![detail("target_id", "unknown", "no such agent")],
                rid,
            )),
            Err(e) => Err(Failure::from_store(e, Evaluation::NOT_FOUND, rid)),
        }
    }

    async fn start_run(&self, caller: &Caller, id: String) -> Result<RunRow, Failure> {
        let evaluation = self.row::<Evaluation>(caller, id).await?;
        let run = RunRow {
            id: crate::ids::new_id("evrun"),
            org_id: evaluation.org_id.clone(),
            evaluation_id: evaluation.id.clone(),
            status: "queued".into(),
            summary: None,
            results: "[]".into(),
            error: None,
            created_at: crate::ids::now(),
            started_at: None,
            finished_at: None,
        };
        let queued = run.clone();
        self.run_for(caller, Evaluation::NOT_FOUND, move |conn, _| {
            crate::db::write_transaction(conn, |conn| {
                store::insert_run(conn, &queued)?;
                eval::enqueue(conn, &queued)
            })
        })
        .await?;
        self.background.wake();
        Ok(run)
    }

    /// The run `run_id`, or the evaluation's latest when `None`.
    async fn run_of(
        &self, caller: &Caller, evaluation_id: String, run_id: Option<String>,
    ) -> Result<EvaluationRun, Failure> {
        let rid = caller.request_id.as_str();
        let evaluation = self.row::<Evaluation>(caller, evaluation_id).await?;
        let Some(run_id) = run_id.or(evaluation.latest_run_id.clone()) else {
            return Err(Failure::new(
                Kind::NotFound,
                "NO_RUNS",
                "the evaluation has not run yet: POST its /run",
                rid,
            ));
        };
        let row: RunRow = self
            .child(caller, evaluation.id, run_id, RUN_NOT_FOUND)
            .await?;
        row_to_run(&row, true).map_err(store_error(RUN_NOT_FOUND, rid))
    }
}

/// A new evaluation of `org_id` as sent.
fn new_row(org_id: &str, input: &EvaluationInput) -> EvaluationRow {
    let now = crate::ids::now();
    EvaluationRow {
        id: crate::ids::new_id("eval"),
        org_id: org_id.to_string(),
        name: input.name.clone(),
        target_id: input.target_id.clone(),
        body: body_of(input).to_string(),
        latest_run_id: None,
        created_at: now.clone(),
        updated_at: now,
    }
}

impl EvaluationsApi for Handlers {
    async fn list_evaluations(
        &self, caller: Caller, params: ListEvaluationsParams,
    ) -> Reply<ListEvaluationsResponse> {
        let target = params.target_id.clone();
        let (data, pagination) = self
            .list_page::<Evaluation>(&caller, &params, move |conn, org, page| {
                store::list(conn, org, target.as_deref(), page)
            })
            .await?;
        Ok(ListEvaluationsResponse::Ok(Json(EvaluationList {
            data,
            pagination,
        })))
    }

    async fn create_evaluation(
        &self, caller: Caller, params: CreateEvaluationParams,
    ) -> Reply<CreateEvaluationResponse> {
        self.check_evaluation_target(&caller, params.body.target_id.clone())
            .await?;
        let row = new_row(&caller.org_id, &params.body);
        let row = self
            .create_row::<Evaluation>(&caller, &params, row, store::insert)
            .await?;
        let evaluation = Evaluation::from_row(&row)
            .map_err(store_error(Evaluation::NOT_FOUND, &caller.request_id))?;
        let location = location(&params, &row.id);
        Ok(CreateEvaluationResponse::Created(
            Json(evaluation),
            location,
        ))
    }

    async fn get_evaluation(
        &self, caller: Caller, params: GetEvaluationParams,
    ) -> Reply<GetEvaluationResponse> {
        let evaluation = self
            .item::<Evaluation>(&caller, params.evaluation_id)
            .await?;
        Ok(GetEvaluationResponse::Ok(Json(evaluation)))
    }

    async fn delete_evaluation(
        &self, caller: Caller, params: DeleteEvaluationParams,
    ) -> Reply<DeleteEvaluationResponse> {
        self.remove::<Evaluation>(&caller, params.evaluation_id)
            .await?;
        Ok(DeleteEvaluationResponse::NoContent)
    }

    async fn run_evaluation(
        &self, caller: Caller, params: RunEvaluationParams,
    ) -> Reply<RunEvaluationResponse> {
        let row = self.start_run(&caller, params.evaluation_id).await?;
        let run = row_to_run(&row, true).map_err(store_error(RUN_NOT_FOUND, &caller.request_id))?;
        let location = format!("/v1/evaluations/{}/runs/{}", run.evaluation_id, run.id);
        Ok(RunEvaluationResponse::Accepted(Json(run), location))
    }

    async fn list_evaluation_runs(
        &self, caller: Caller, params: ListEvaluationRunsParams,
    ) -> Reply<ListEvaluationRunsResponse> {
        let id = params.evaluation_id.clone();
        let list = move |conn: &mut DbConnection, org: &str, page: &Page| {
            store::get(conn, org, &id)?;
            store::list_runs(conn, org, &id, page)
        };
        let (data, pagination) = self
            .page_of(&caller, &params, Evaluation::NOT_FOUND, list, |r| {
                row_to_run(r, false)
            })
            .await?;
        let list = EvaluationRunList { data, pagination };
        Ok(ListEvaluationRunsResponse::Ok(Json(list)))
    }

    async fn get_evaluation_run(
        &self, caller: Caller, params: GetEvaluationRunParams,
    ) -> Reply<GetEvaluationRunResponse> {
        let run = self
            .run_of(&caller, params.evaluation_id, Some(params.run_id))
            .await?;
        Ok(GetEvaluationRunResponse::Ok(Json(run)))
    }

    async fn get_evaluation_results(
        &self, caller: Caller, params: GetEvaluationResultsParams,
    ) -> Reply<GetEvaluationResultsResponse> {
        let run = self.run_of(&caller, params.evaluation_id, None).await?;
        Ok(GetEvaluationResultsResponse::Ok(Json(run)))
    }
}
