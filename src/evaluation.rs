//! Evaluations (Magnet AI): run an agent on a dataset of cases and score each answer.
//!
//! Scoring is plain functions ([`exact_match`], [`contains`], [`token_f1`]). Running a case
//! goes through a [`CaseRunner`], the seam to the execution engine; [`run`] drives a whole
//! evaluation run and records it.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::db::evaluations as db;
use crate::db::{Store, StoreResult};

/// Lower-cased, trimmed, whitespace collapsed.
fn normalize(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Equal after normalization.
pub fn exact_match(output: &str, expected: &str) -> bool {
    normalize(output) == normalize(expected)
}

/// The expected text appears in the output, both normalized (an empty expectation always
/// does).
pub fn contains(output: &str, expected: &str) -> bool {
    normalize(output).contains(&normalize(expected))
}

/// Lower-cased alphanumeric words.
fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// F1 of the word tokens output and expectation share (each token counted as often as both
/// have it), as SQuAD scores answers. Two empty texts score 1.
pub fn token_f1(output: &str, expected: &str) -> f64 {
    let (out, exp) = (tokens(output), tokens(expected));
    if out.is_empty() || exp.is_empty() {
        return if out.is_empty() && exp.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut remaining: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for t in &exp {
        *remaining.entry(t.as_str()).or_default() += 1;
    }
    let mut common = 0usize;
    for t in &out {
        if let Some(n) = remaining.get_mut(t.as_str())
            && *n > 0
        {
            *n -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / out.len() as f64;
    let recall = common as f64 / exp.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// How a case passes (`PassCriteria` in the spec).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Criteria {
    pub metric: Metric,
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ExactMatch,
    Contains,
    TokenF1,
}

impl Criteria {
    /// `threshold` defaults to 0.5 for token F1 and 1 for the yes/no metrics.
    pub fn new(metric: Metric, threshold: Option<f64>) -> Self {
        let default = if metric == Metric::TokenF1 { 0.5 } else { 1.0 };
        Self {
            metric,
            threshold: threshold.unwrap_or(default),
        }
    }
}

/// One case of the dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub input: String,
    #[serde(default)]
    pub expected_output: String,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// What running one case produced.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseOutput {
    pub text: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nano_usd: i64,
    pub execution_id: Option<String>,
}

/// Runs one input through an agent: the seam between evaluations and the execution engine.
pub trait CaseRunner: Send + Sync + std::fmt::Debug {
    fn run_case<'a>(
        &'a self, org_id: &'a str, agent_id: &'a str, input: &'a str,
    ) -> BoxFuture<'a, Result<CaseOutput, String>>;
}

/// One case's result, stored with the run (`CaseResult` in the spec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub index: i64,
    pub input: String,
    pub expected_output: String,
    pub output: Option<String>,
    pub passed: bool,
    pub exact_match: bool,
    pub contains: bool,
    pub token_f1: f64,
    pub latency_ms: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub execution_id: Option<String>,
    pub error: Option<String>,
}

/// A run's aggregates (`EvaluationSummary` in the spec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub cases: i64,
    pub passed: i64,
    pub failed: i64,
    pub errors: i64,
    pub pass_rate: f64,
    pub exact_match_rate: f64,
    pub contains_rate: f64,
    pub mean_token_f1: f64,
    pub latency_ms: Percentiles,
    pub tokens: Tokens,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: Option<i64>,
    pub p95: Option<i64>,
    pub p99: Option<i64>,
}

impl Percentiles {
    /// The 50th, 95th and 99th percentiles of sorted `values`, by nearest rank.
    pub fn of(sorted: &[i64]) -> Percentiles {
        Percentiles {
            p50: nearest_rank(sorted, 0.50),
            p95: nearest_rank(sorted, 0.95),
            p99: nearest_rank(sorted, 0.99),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tokens {
    pub input: i64,
    pub output: i64,
}

impl Tokens {
    /// The sums of `(input, output)` token counts.
    pub fn total(counts: impl IntoIterator<Item = (i64, i64)>) -> Tokens {
        let (input, output) = counts
            .into_iter()
            .fold((0, 0), |(input, output), (i, o)| (input + i, output + o));
        Tokens { input, output }
    }
}

/// Scores one output against its case.
pub fn score(
    index: usize, case: &Case, criteria: Criteria, out: CaseOutput, latency_ms: i64,
) -> CaseResult {
    let exact = exact_match(&out.text, &case.expected_output);
    let within = contains(&out.text, &case.expected_output);
    let f1 = token_f1(&out.text, &case.expected_output);
    let value = match criteria.metric {
        Metric::ExactMatch => f64::from(u8::from(exact)),
        Metric::Contains => f64::from(u8::from(within)),
        Metric::TokenF1 => f1,
    };
    CaseResult {
        index: index as i64,
        input: case.input.clone(),
        expected_output: case.expected_output.clone(),
        output: Some(out.text),
        passed: value >= criteria.threshold,
        exact_match: exact,
        contains: within,
        token_f1: f1,
        latency_ms,
        input_tokens: out.input_tokens,
        output_tokens: out.output_tokens,
        cost_usd: out.cost_nano_usd as f64 / 1e9,
        execution_id: out.execution_id,
        error: None,
    }
}

/// The value at `q` (0..1] of sorted `values`, by nearest rank.
fn nearest_rank(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The aggregates of a run's results.
pub fn summarize(results: &[CaseResult]) -> Summary {
    let n = results.len() as i64;
    let share = |count: usize| if n == 0 { 0.0 } else { count as f64 / n as f64 };
    let passed = results.iter().filter(|r| r.passed).count();
    let mut latencies: Vec<i64> = results
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| r.latency_ms)
        .collect();
    latencies.sort_unstable();
    Summary {
        cases: n,
        passed: passed as i64,
        failed: n - passed as i64,
        errors: results.iter().filter(|r| r.error.is_some()).count() as i64,
        pass_rate: share(passed),
        exact_match_rate: share(results.iter().filter(|r| r.exact_match).count()),
        contains_rate: share(results.iter().filter(|r| r.contains).count()),
        mean_token_f1: if n == 0 {
            0.0
        } else {
            results.iter().map(|r| r.token_f1).sum::<f64>() / n as f64
        },
        latency_ms: Percentiles::of(&latencies),
        tokens: Tokens::total(results.iter().map(|r| (r.input_tokens, r.output_tokens))),
        cost_usd: results.iter().map(|r| r.cost_usd).sum(),
    }
}

/// Which run of which evaluation, on which agent.
#[derive(Debug, Clone)]
pub struct RunTarget {
    pub org_id: String,
    pub agent_id: String,
    pub evaluation_id: String,
    pub run_id: String,
}

/// An evaluation as stored: its description, cases and pass criteria.
pub struct StoredEvaluation {
    pub description: Option<String>,
    pub cases: Vec<Case>,
    pub criteria: Criteria,
}

/// What `row`'s body holds.
pub fn stored(row: &db::EvaluationRow) -> Result<StoredEvaluation, crate::db::StoreError> {
    let corrupt = |e: serde_json::Error| {
        crate::db::StoreError::Corrupt(format!("evaluation {}: {e}", row.id))
    };
    let body: serde_json::Value = serde_json::from_str(&row.body).map_err(corrupt)?;
    Ok(StoredEvaluation {
        description: body["description"].as_str().map(str::to_string),
        cases: serde_json::from_value(body["test_cases"].clone()).map_err(corrupt)?,
        criteria: serde_json::from_value(body["criteria"].clone()).map_err(corrupt)?,
    })
}

/// The job kind that runs an evaluation run; the job's id is the run's.
pub const KIND: &str = "evaluation_run";

/// Queues `run` (inside the transaction that writes its row).
pub fn enqueue(conn: &mut crate::db::DbConnection, run: &db::RunRow) -> StoreResult<()> {
    crate::jobs::enqueue_row::<RunJobs>(conn, &run.org_id, &run.id)
}

/// Runs evaluation runs from the jobs queue. They belong on a pool of their own: a run
/// waits on its cases' executions, which must not wait for a worker the runs hold.
#[derive(Debug, Clone)]
pub struct RunJobs {
    pub store: Store,
    pub cases: Arc<dyn CaseRunner>,
    pub events: crate::events::EventBus,
}

impl RunJobs {
    /// Records that run `id` ended without results, unless it already ended.
    async fn fail(&self, id: String, message: String) {
        let result = self
            .store
            .run(move |conn| {
                let run = db::run_by_id(conn, &id)?;
                if matches!(run.status.as_str(), "queued" | "running") {
                    db::finish_run(
                        conn,
                        &id,
                        "failed",
                        None,
                        "[]",
                        Some(&message),
                        &crate::ids::now(),
                    )?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot fail an evaluation run");
        }
    }
}

impl crate::jobs::RowJob for RunJobs {
    const KIND: &'static str = KIND;

    async fn run_row(self, id: String) -> Result<(), String> {
        let run_id = id.clone();
        let loaded = self
            .store
            .run(move |conn| {
                let run = db::run_by_id(conn, &run_id)?;
                let evaluation = db::get(conn, &run.org_id, &run.evaluation_id)?;
                let s = stored(&evaluation)?;
                Ok((run, evaluation.target_id, s))
            })
            .await;
        let (run, agent_id, s) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                self.fail(id, format!("the run could not start: {e}")).await;
                return Ok(());
            }
        };
        let target = RunTarget {
            org_id: run.org_id.clone(),
            agent_id,
            evaluation_id: run.evaluation_id.clone(),
            run_id: run.id.clone(),
        };
        let result = self::run(
            self.store.clone(),
            self.cases.clone(),
            self.events.clone(),
            target,
            s.cases,
            s.criteria,
        )
        .await;
        if let Err(e) = result {
            tracing::warn!(run = %run.id, error = %e, "evaluation run failed");
            self.fail(run.id, format!("the run could not be recorded: {e}"))
                .await;
        }
        Ok(())
    }

    async fn abandon_row(self, id: String) {
        self.fail(id, "interrupted: the server running it stopped".into())
            .await;
    }
}

/// Runs every case of a queued run in order, then records the results and summary and
/// publishes `evaluation.completed`. A case the agent fails on is a failed case with its
/// error; only storage failing fails the run.
pub async fn run(
    store: Store, runner: Arc<dyn CaseRunner>, events: crate::events::EventBus, target: RunTarget,
    cases: Vec<Case>, criteria: Criteria,
) -> StoreResult<()> {
    let RunTarget {
        org_id,
        agent_id,
        evaluation_id,
        run_id,
    } = target;
    let id = run_id.clone();
    store
        .run(move |conn| db::start_run(conn, &id, &crate::ids::now()))
        .await?;
    let mut results = Vec::with_capacity(cases.len());
    for (index, case) in cases.iter().enumerate() {
        let started = Instant::now();
        let outcome = runner.run_case(&org_id, &agent_id, &case.input).await;
        let latency = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        results.push(match outcome {
            Ok(out) => score(index, case, criteria, out, latency),
            Err(error) => CaseResult {
                index: index as i64,
                input: case.input.clone(),
                expected_output: case.expected_output.clone(),
                output: None,
                passed: false,
                exact_match: false,
                contains: false,
                token_f1: 0.0,
                latency_ms: latency,
                input_tokens: 0,
                output_tokens: 0,
                cost_usd: 0.0,
                execution_id: None,
                error: Some(error),
            },
        });
    }
    let summary = serde_json::to_string(&summarize(&results)).ok();
    let results = serde_json::to_string(&results).unwrap_or_else(|_| "[]".into());
    store
        .run(move |conn| {
            crate::db::write_transaction(conn, |conn| {
                db::finish_run(
                    conn,
                    &run_id,
                    "completed",
                    summary.as_deref(),
                    &results,
                    None,
                    &crate::ids::now(),
                )?;
                crate::events::publish(
                    conn,
                    &org_id,
                    "evaluation.completed",
                    Some(&evaluation_id),
                    serde_json::json!({
                        "evaluation_id": evaluation_id,
                        "run_id": run_id,
                        "status": "completed",
                    }),
                )
            })
        })
        .await?;
    events.wake();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 0.50), Some(50));
        assert_eq!(nearest_rank(&v, 0.95), Some(95));
        assert_eq!(nearest_rank(&v, 0.99), Some(99));
        assert_eq!(nearest_rank(&[7], 0.99), Some(7));
        assert_eq!(nearest_rank(&[], 0.5), None);
        assert_eq!(nearest_rank(&[1, 2, 3], 0.5), Some(2));
    }

    #[test]
    fn exact_match_and_contains_normalize_case_and_space() {
        assert!(exact_match("  Thirty   Days ", "thirty days"));
        assert!(!exact_match("thirty days.", "thirty days"));
        assert!(contains("Returns within 30   DAYS of delivery", "30 days"));
        assert!(contains("anything", ""));
        assert!(!contains("30 day", "30 days"));
    }

    #[test]
    fn token_f1_counts_shared_words() {
        assert_eq!(token_f1("the cat sat", "the cat sat"), 1.0);
        assert_eq!(token_f1("dog", "cat"), 0.0);
        // output: a b c d (4), expected: a b (2), common 2: p = 0.5, r = 1, f1 = 2/3.
        assert!((token_f1("a b c d", "a b") - 2.0 / 3.0).abs() < 1e-12);
        // Repeated words count once per occurrence on both sides.
        assert!((token_f1("a a a", "a") - 0.5).abs() < 1e-12);
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("x", ""), 0.0);
    }

    #[test]
    fn criteria_thresholds_decide_a_pass() {
        let case = Case {
            input: "q".into(),
            expected_output: "30 days".into(),
            metadata: Default::default(),
        };
        let out = |t: &str| CaseOutput {
            text: t.into(),
            input_tokens: 10,
            output_tokens: 2,
            cost_nano_usd: 1_000,
            execution_id: None,
        };
        let f1 = Criteria::new(Metric::TokenF1, None);
        assert_eq!(f1.threshold, 0.5);
        assert!(score(0, &case, f1, out("within 30 days"), 5).passed);
        assert!(!score(0, &case, f1, out("a month or so, roughly 30"), 5).passed);
        let exact = Criteria::new(Metric::ExactMatch, None);
        let r = score(1, &case, exact, out("30 Days"), 5);
        assert!(r.passed && r.exact_match && r.contains);
        assert_eq!(r.cost_usd, 1e-6);
    }

    #[test]
    fn summaries_aggregate_results() {
        let r = |passed: bool, latency: i64, error: Option<&str>| CaseResult {
            index: 0,
            input: String::new(),
            expected_output: String::new(),
            output: None,
            passed,
            exact_match: passed,
            contains: passed,
            token_f1: if passed { 1.0 } else { 0.0 },
            latency_ms: latency,
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: 0.25,
            execution_id: None,
            error: error.map(str::to_string),
        };
        let s = summarize(&[
            r(true, 10, None),
            r(true, 30, None),
            r(false, 20, None),
            r(false, 999, Some("boom")),
        ]);
        assert_eq!((s.cases, s.passed, s.failed, s.errors), (4, 2, 2, 1));
        assert_eq!(s.pass_rate, 0.5);
        assert_eq!(s.mean_token_f1, 0.5);
        assert_eq!(
            s.latency_ms,
            Percentiles {
                p50: Some(20),
                p95: Some(30),
                p99: Some(30)
            }
        );
        assert_eq!(
            s.tokens,
            Tokens {
                input: 40,
                output: 20
            }
        );
        assert_eq!(s.cost_usd, 1.0);
        let empty = summarize(&[]);
        assert_eq!((empty.pass_rate, empty.latency_ms.p50), (0.0, None));
    }
}

/// Runs each case as an execution on the worker pool, as `POST /v1/agents/{id}/execute`
/// would with `options.wait`: the agent's own model, template and knowledge, its deployment's
/// slots, a usage record and the `execution.*` events. A case's execution carries
/// `"evaluation": true` in its request.
#[derive(Clone)]
pub struct PooledCases {
    pub store: Store,
    pub live: Arc<crate::engine::runner::Live>,
    pub pool: crate::jobs::WorkerPool,
}

impl std::fmt::Debug for PooledCases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledCases").finish_non_exhaustive()
    }
}

impl CaseRunner for PooledCases {
    fn run_case<'a>(
        &'a self, org_id: &'a str, agent_id: &'a str, input: &'a str,
    ) -> BoxFuture<'a, Result<CaseOutput, String>> {
        use crate::db::executions::{self as exec, ExecutionRow};
        use crate::engine::runner;
        use futures_util::FutureExt;
        async move {
            let id = crate::ids::new_id("exec");
            let heard = self.live.subscribe(&id);
            let request = exec::ExecutionRequest {
                input: input.into(),
                parameters: Some(Default::default()),
                evaluation: true,
                ..Default::default()
            };
            let row = ExecutionRow::queued(id.clone(), org_id, agent_id, request);
            let job = runner::job_for(&row);
            let accepted = self
                .store
                .run(move |conn| {
                    crate::db::write_transaction(conn, |conn| {
                        if crate::db::deployments::scaled_to_zero(conn, &row.agent_id)? {
                            return Ok(false);
                        }
                        exec::insert(conn, &row)?;
                        crate::jobs::enqueue(conn, &job)?;
                        Ok(true)
                    })
                })
                .await;
            let accepted = match accepted {
                Ok(a) => a,
                Err(e) => {
                    self.live.release(&id);
                    return Err(format!("the case could not be queued: {e}"));
                }
            };
            if !accepted {
                self.live.release(&id);
                return Err("the agent's deployment is scaled to 0 replicas".into());
            }
            self.pool.wake();
            let limit = std::time::Duration::from_millis(
                u64::try_from(runner::DEFAULT_TIMEOUT_MS).unwrap_or(120_000),
            ) + std::time::Duration::from_secs(5);
            let row = runner::wait_finished(&self.store, org_id, &id, heard, limit)
                .await
                .map_err(|e| format!("execution {id} cannot be read: {e}"))
                .and_then(|row| {
                    if row.is_finished() {
                        Ok(row)
                    } else {
                        Err(format!("execution {id} did not finish in time"))
                    }
                });
            self.live.release(&id);
            let row = row?;
            if row.status != exec::ExecutionStatus::Succeeded {
                let reason = row
                    .error
                    .as_ref()
                    .map_or_else(|| row.status.to_string(), |e| e.message.clone());
                return Err(format!("execution {id} {}: {reason}", row.status));
            }
            Ok(CaseOutput {
                text: row.result.unwrap_or_default(),
                input_tokens: row.input_tokens,
                output_tokens: row.output_tokens,
                cost_nano_usd: row.cost_nano_usd,
                execution_id: Some(id),
            })
        }
        .boxed()
    }
}
