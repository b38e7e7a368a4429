//! The evaluations resource (Magnet AI): datasets of cases run through an agent, runs kept.

use agentplane_api::ApiError;
use agentplane_api::evaluations::*;
use agentplane_api::models::{
    CaseResult, Evaluation, EvaluationInput, EvaluationList, EvaluationMetric, EvaluationRun,
    EvaluationRunList, EvaluationRunStatus, EvaluationSummary, EvaluationType, LatencyPercentiles,
    PassCriteria, TestCase, TokenCounts,
};
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;
use serde_json::{Value, json};

use super::Handlers;
use super::idem;
use super::paging::PageRequest;
use crate::auth::Caller;
use crate::db::StoreError;
use crate::db::evaluations::{self as store, EvaluationRow, RunRow};
use crate::error::{Failure, Kind, detail, store_error};
use crate::evaluation::{self as eval, Criteria, Metric, stored};

const NOT_FOUND: &str = "EVALUATION_NOT_FOUND";
const RUN_NOT_FOUND: &str = "EVALUATION_RUN_NOT_FOUND";
const CREATE_OPERATION: &str = "createEvaluation";

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

fn row_to_evaluation(row: &EvaluationRow) -> Result<Evaluation, StoreError> {
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
                latency_ms: LatencyPercentiles {
                    p50: s.latency_ms.p50,
                    p95: s.latency_ms.p95,
                    p99: s.latency_ms.p99,
                },
                tokens: TokenCounts {
                    input: s.tokens.input,
                    output: s.tokens.output,
                },
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
    async fn evaluation_row(&self, caller: &Caller, id: String) -> Result<EvaluationRow, Failure> {
        let org = caller.org_id.clone();
        self.store
            .run(move |conn| store::get(conn, &org, &id))
            .await
            .map_err(store_error(NOT_FOUND, &caller.request_id))
    }

    async fn list_evaluations_page(
        &self,
        caller: &Caller,
        params: ListEvaluationsParams,
    ) -> Result<EvaluationList, Failure> {
        let rid = caller.request_id.as_str();
        let req = PageRequest::of(&params, rid)?;
        let page = req.page();
        let org = caller.org_id.clone();
        let target = params.target_id;
        let (rows, total) = self
            .store
            .run(move |conn| store::list(conn, &org, target.as_deref(), &page))
            .await
            .map_err(store_error(NOT_FOUND, rid))?;
        let data = rows
            .iter()
            .map(row_to_evaluation)
            .collect::<Result<Vec<_>, _>>()
            .map_err(store_error(NOT_FOUND, rid))?;
        Ok(EvaluationList {
            pagination: req.pagination(rows.len(), rows.last().map(|r| r.id.as_str()), total),
            data,
        })
    }

    /// The evaluated agent must be the caller's; another organization's is as unknown (422).
    async fn check_evaluation_target(
        &self,
        caller: &Caller,
        target_id: String,
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
            Err(e) => Err(Failure::from_store(e, NOT_FOUND, rid)),
        }
    }

    async fn create_evaluation_row(
        &self,
        caller: &Caller,
        params: CreateEvaluationParams,
    ) -> Result<EvaluationRow, Failure> {
        let rid = caller.request_id.as_str();
        self.check_evaluation_target(caller, params.body.target_id.clone())
            .await?;
        let hash = idem::request_hash(&params.body.to_json().unwrap_or_default());
        let now = crate::ids::now();
        let row = EvaluationRow {
            id: crate::ids::new_id("eval"),
            org_id: caller.org_id.clone(),
            name: params.body.name.clone(),
            target_id: params.body.target_id.clone(),
            body: body_of(&params.body).to_string(),
            latest_run_id: None,
            created_at: now.clone(),
            updated_at: now,
        };
        let keyed = idem::NewKeyed {
            org_id: row.org_id.clone(),
            operation: CREATE_OPERATION,
            key: params.idempotency_key,
            request_hash: hash,
            resource_id: row.id.clone(),
        };
        let org = row.org_id.clone();
        idem::create_resource(
            &self.store,
            keyed,
            move |conn| store::insert(conn, &row).map(|()| row.clone()),
            move |conn, id| store::get(conn, &org, id),
            NOT_FOUND,
            rid,
        )
        .await
    }

    async fn start_run(&self, caller: &Caller, id: String) -> Result<RunRow, Failure> {
        let rid = caller.request_id.as_str();
        let evaluation = self.evaluation_row(caller, id).await?;
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
        self.store
            .run(move |conn| {
                crate::db::write_transaction(conn, |conn| {
                    store::insert_run(conn, &queued)?;
                    eval::enqueue(conn, &queued)
                })
            })
            .await
            .map_err(store_error(NOT_FOUND, rid))?;
        self.background.wake();
        Ok(run)
    }

    async fn runs_page(
        &self,
        caller: &Caller,
        params: ListEvaluationRunsParams,
    ) -> Result<EvaluationRunList, Failure> {
        let rid = caller.request_id.as_str();
        let req = PageRequest::of(&params, rid)?;
        let page = req.page();
        let evaluation = self.evaluation_row(caller, params.evaluation_id).await?;
        let org = caller.org_id.clone();
        let (rows, total) = self
            .store
            .run(move |conn| store::list_runs(conn, &org, &evaluation.id, &page))
            .await
            .map_err(store_error(NOT_FOUND, rid))?;
        let data = rows
            .iter()
            .map(|r| row_to_run(r, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(store_error(RUN_NOT_FOUND, rid))?;
        Ok(EvaluationRunList {
            pagination: req.pagination(rows.len(), rows.last().map(|r| r.id.as_str()), total),
            data,
        })
    }

    /// The run `run_id`, or the evaluation's latest when `None`.
    async fn run_of(
        &self,
        caller: &Caller,
        evaluation_id: String,
        run_id: Option<String>,
    ) -> Result<EvaluationRun, Failure> {
        let rid = caller.request_id.as_str();
        let evaluation = self.evaluation_row(caller, evaluation_id).await?;
        let Some(run_id) = run_id.or(evaluation.latest_run_id.clone()) else {
            return Err(Failure::new(
                Kind::NotFound,
                "NO_RUNS",
                "the evaluation has not run yet: POST its /run",
                rid,
            ));
        };
        let org = caller.org_id.clone();
        let row = self
            .store
            .run(move |conn| store::get_run(conn, &org, &evaluation.id, &run_id))
            .await
            .map_err(store_error(RUN_NOT_FOUND, rid))?;
        row_to_run(&row, true).map_err(store_error(RUN_NOT_FOUND, rid))
    }
}

impl EvaluationsApi for Handlers {
    async fn list_evaluations(
        &self,
        caller: Caller,
        params: ListEvaluationsParams,
    ) -> Result<ListEvaluationsResponse, ApiError> {
        let list = self.list_evaluations_page(&caller, params).await?;
        Ok(ListEvaluationsResponse::Ok(Json(list)))
    }

    async fn create_evaluation(
        &self,
        caller: Caller,
        params: CreateEvaluationParams,
    ) -> Result<CreateEvaluationResponse, ApiError> {
        let row = self.create_evaluation_row(&caller, params).await?;
        let e = row_to_evaluation(&row).map_err(store_error(NOT_FOUND, &caller.request_id))?;
        let location = format!("/v1/evaluations/{}", e.id);
        Ok(CreateEvaluationResponse::Created(Json(e), location))
    }

    async fn get_evaluation(
        &self,
        caller: Caller,
        params: GetEvaluationParams,
    ) -> Result<GetEvaluationResponse, ApiError> {
        let row = self.evaluation_row(&caller, params.evaluation_id).await?;
        let e = row_to_evaluation(&row).map_err(store_error(NOT_FOUND, &caller.request_id))?;
        Ok(GetEvaluationResponse::Ok(Json(e)))
    }

    async fn delete_evaluation(
        &self,
        caller: Caller,
        params: DeleteEvaluationParams,
    ) -> Result<DeleteEvaluationResponse, ApiError> {
        let org = caller.org_id.clone();
        let id = params.evaluation_id;
        self.store
            .run(move |conn| store::delete(conn, &org, &id))
            .await
            .map_err(store_error(NOT_FOUND, &caller.request_id))?;
        Ok(DeleteEvaluationResponse::NoContent)
    }

    async fn run_evaluation(
        &self,
        caller: Caller,
        params: RunEvaluationParams,
    ) -> Result<RunEvaluationResponse, ApiError> {
        let row = self.start_run(&caller, params.evaluation_id).await?;
        let run = row_to_run(&row, true).map_err(store_error(RUN_NOT_FOUND, &caller.request_id))?;
        let location = format!("/v1/evaluations/{}/runs/{}", run.evaluation_id, run.id);
        Ok(RunEvaluationResponse::Accepted(Json(run), location))
    }

    async fn list_evaluation_runs(
        &self,
        caller: Caller,
        params: ListEvaluationRunsParams,
    ) -> Result<ListEvaluationRunsResponse, ApiError> {
        let list = self.runs_page(&caller, params).await?;
        Ok(ListEvaluationRunsResponse::Ok(Json(list)))
    }

    async fn get_evaluation_run(
        &self,
        caller: Caller,
        params: GetEvaluationRunParams,
    ) -> Result<GetEvaluationRunResponse, ApiError> {
        let run = self
            .run_of(&caller, params.evaluation_id, Some(params.run_id))
            .await?;
        Ok(GetEvaluationRunResponse::Ok(Json(run)))
    }

    async fn get_evaluation_results(
        &self,
        caller: Caller,
        params: GetEvaluationResultsParams,
    ) -> Result<GetEvaluationResultsResponse, ApiError> {
        let run = self.run_of(&caller, params.evaluation_id, None).await?;
        Ok(GetEvaluationResultsResponse::Ok(Json(run)))
    }
}
